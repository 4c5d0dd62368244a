"""Reranking throughput: bigrerank's scoring path vs sentence-transformers `CrossEncoder.predict`.

Same model (MiniLM-L6 with a fresh 1-logit head), same candidates (BM25 top-K of SciFact dev queries), same
max_len and batch size, fp32 and bf16 (bf16 only where computed natively, unless --dtypes asks), timed from text
pairs to scores. Each system lives in its own process, set up as its user would run it: bigrerank as `bigrerank rerank` runs (freed host memory retained, see
bigrerank/host_memory.py), eager and with `--torch_compile`; sentence-transformers with glibc's
defaults, plus a row with the same allocator setting as bigrerank, so the code's share of the gain is visible.
Every system first scores all candidates once untimed (the compiled ones compile then); rounds are then
interleaved across the processes (one runs at a time) and the best round is kept. Both are set against a large
matmul's GFLOP/s measured in the same run; model FLOPs: common.model_flops (forward: 2 x non-embedding
parameters + attention's 4 x layers x hidden x pair length, per token).

    python bench/rerank_throughput.py [--queries 15] [--depth 20] [--max_len 256] [--batch_size 32] [--rounds 3]
                                      [--device cpu|cuda] [--dtypes auto|fp32|fp32,bf16]

BIGRERANK_BENCH_MODEL and BIGRERANK_DATA override the model directory and the data root (see common.py).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import common

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class System:
    library: str  # "bigrerank" or "sentence-transformers"
    precision: str
    torch_compile: bool = False
    retain_freed_memory: bool = False

    @property
    def name(self) -> str:
        compiled = " --torch_compile" if self.torch_compile else ""
        retained = " (freed memory retained)" if self.library != "bigrerank" and self.retain_freed_memory else ""
        return f"{self.library}{compiled}{retained} {self.precision}"


def systems(precisions: list[str]) -> list[System]:
    return [system for precision in precisions for system in (
        System("bigrerank", precision, retain_freed_memory=True),
        System("bigrerank", precision, torch_compile=True, retain_freed_memory=True),
        System("sentence-transformers", precision),
        System("sentence-transformers", precision, retain_freed_memory=True))]


def reranker_dir(directory: Path) -> Path:
    """The benchmark backbone loaded with num_labels=1 (random head, fixed seed), saved as a plain HF directory."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = common.minilm_dir()
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(source, num_labels=1).save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return directory


def scoring_function(system: System, model_dir: Path, candidates, args):
    """A no-argument function scoring every candidate with `system`; returns host floats (device work done)."""
    if system.library == "bigrerank":
        from bigrerank import RerankerForInference
        from bigrerank.inference.rerank import score_candidates

        reranker = RerankerForInference.from_pretrained(model_dir, max_len=args.max_len, device=args.device,
                                                        precision=system.precision,
                                                        torch_compile=system.torch_compile)
        return lambda: score_candidates(reranker, candidates, args.batch_size, show_progress=False)
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(model_dir), max_length=args.max_len, device=args.device,
                         model_kwargs={"dtype": PRECISIONS[system.precision]})
    pairs = [(c.query, c.passage) for c in candidates]
    return lambda: [float(s) for s in model.predict(pairs, batch_size=args.batch_size,
                                                    activation_fn=torch.nn.Identity(), show_progress_bar=False)]


def timed(fn, device: str) -> tuple[float, list[float]]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    scores = fn()
    return time.perf_counter() - start, scores


def serve(system: System, model_dir: Path, candidates, args, conn) -> None:
    """Worker process: set up `system`, report the untimed warm-up, then time one scoring pass per request."""
    if system.retain_freed_memory:
        from bigrerank.host_memory import retain_freed_memory

        retain_freed_memory()
    fn = scoring_function(system, model_dir, candidates, args)
    conn.send(timed(fn, args.device)[0])
    while conn.recv() == "run":
        conn.send(timed(fn, args.device))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--max_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="auto", help="fp32,bf16; auto: fp32, and bf16 where it is native")
    args = parser.parse_args()
    precisions = common.precisions(args.dtypes, args.device)
    common.require_scifact()
    try:
        import sentence_transformers
    except ImportError:
        sys.exit("skipped: sentence-transformers is not installed (pip install --no-deps sentence-transformers)")
    from bigrerank.data.candidates import encode_candidates, read_run_candidates
    from bigrerank.inference.reranker import RerankerForInference

    candidates = read_run_candidates(common.SCIFACT / "runs" / "bm25.dev.top100.trec", common.SCIFACT / "queries.jsonl",
                                     common.SCIFACT / "corpus.jsonl", args.depth)
    first = set(list(dict.fromkeys(c.qid for c in candidates))[:args.queries])
    candidates = [c for c in candidates if c.qid in first]

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = reranker_dir(Path(tmp) / "model")
        probe = RerankerForInference.from_pretrained(model_dir, max_len=args.max_len, device="cpu")
        lengths = [len(ids) for ids, _ in encode_candidates(probe.encoder(), candidates)]
        tokens = sum(lengths)  # each token attends over its pair: sum(length^2) / tokens on average
        flops = common.model_flops(common.model_shape(probe.hf_model), tokens, sum(n * n for n in lengths) / tokens,
                                   training=False)
        size = 8192 if args.device == "cuda" else 2048
        peak = {p: common.matmul_gflops(PRECISIONS[p], size if p == "fp32" else 2 * size, device=args.device)
                for p in precisions}
        where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"{len(candidates)} pairs ({len(first)} SciFact dev queries x BM25 top-{args.depth}), {tokens} tokens, "
              f"max_len {args.max_len}, batch {args.batch_size}, {where}, model {common.model_label()}, "
              f"sentence-transformers {sentence_transformers.__version__}, one process per system, best of "
              f"{args.rounds} interleaved rounds", flush=True)
        workers = {}
        context = mp.get_context("spawn")
        for system in systems(precisions):  # started one at a time, so warm-ups (and compiles) do not overlap
            conn, child = context.Pipe()
            process = context.Process(target=serve, args=(system, model_dir, candidates, args, child), daemon=True)
            process.start()
            workers[system] = (process, conn)
            print(f"warm-up {system.name}: {conn.recv():.1f} s", flush=True)
        best: dict[System, tuple[float, list[float]]] = {}
        for _ in range(args.rounds):
            for system, (_, conn) in workers.items():
                conn.send("run")
                seconds, scores = conn.recv()
                if system not in best or seconds < best[system][0]:
                    best[system] = (seconds, scores)
        for process, conn in workers.values():
            conn.send("stop")
            process.join(60)
        print_table(best, len(candidates), flops, peak)
    return 0


def print_table(best: dict, pairs: int, flops: float, peak: dict[str, float]) -> None:
    print("\nmatmul peak: " + ", ".join(f"{p} {rate:.0f} GFLOP/s" for p, rate in peak.items()) + "\n")
    rows = []
    for system, (seconds, scores) in best.items():
        st_seconds, st_scores = best[System("sentence-transformers", system.precision)]
        gflops = flops / seconds / 1e9
        rows.append([system.name, f"{pairs / seconds:.1f}", f"{st_seconds / seconds:.2f}x", f"{gflops:.0f}",
                     f"{100 * gflops / peak[system.precision]:.0f}%",
                     f"{max(abs(a - b) for a, b in zip(scores, st_scores)):.2e}"])
    print(common.table(["system", "pairs/s", "vs sentence-transformers", "GFLOP/s", "% of matmul peak",
                        "max abs diff vs ST"], rows))
    if "bf16" not in peak:
        return
    fp32, bf16 = best[System("bigrerank", "fp32", False, True)][1], best[System("bigrerank", "bf16", False, True)][1]
    print(f"\nbigrerank bf16 vs fp32 scores: max abs diff {max(abs(a - b) for a, b in zip(fp32, bf16)):.2e}")


if __name__ == "__main__":
    sys.exit(main())
