"""What the test files share beyond the tiny models (tests/tiny*.py), the rank harness (tests/dist_harness.py) and
the plain-PyTorch reference (tests/reference.py): the repository root, one builder of a tiny run's `bigrerank train`
arguments, a run's log, the exact-resume check, an exported decoder's weights against the reference, and the
`prepare` inputs."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from bigrerank import cli
from bigrerank.contract import ScoringContract
from tests.dist_harness import run_jobs
from tests.reference import difference
from tests.tiny import write_beir

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"]  # the shipped DeepSpeed configs
# a tiny run's settings, unless a test gives its own: a short group and pairs, a log row per step, no checkpoints
TINY_RUN = {"train_group_size": 4, "max_len": 32, "per_device_train_batch_size": 2, "logging_steps": 1,
            "save_steps": 1000}


def train_argv(model, train, out, config: str | None = "zero0", *extra, **settings) -> list[str]:
    """`bigrerank train`'s arguments for a tiny run: model, data and output directory; `config`, a shipped DeepSpeed
    config's name or a path to one (None: none given); TINY_RUN updated by `settings` (`learning_rate="1e-2"` gives
    `--learning_rate 1e-2`, True a bare flag, None leaves the setting out); then `extra`, as given."""
    argv = ["--model_name_or_path", str(model), "--train_path", str(train), "--output_dir", str(out)]
    if config is not None:
        argv += ["--ds_config", config if config.endswith(".json") else f"ds_configs/{config}.json"]
    for name, value in {**TINY_RUN, **settings}.items():
        if value is True:
            argv.append(f"--{name}")
        elif value is not None and value is not False:
            argv += [f"--{name}", str(value)]
    return [*argv, *(str(e) for e in extra)]


def run_cli(argv: list[str]) -> int:
    """cli.main's exit code, whether it returns it or argparse exits with it."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def launch_env() -> dict[str, str]:
    """This process's environment for a launched training process: one thread, unbuffered, no rank variables."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def log_rows(out: Path) -> list[dict]:
    """The rows of a run's train_log.jsonl."""
    return read_jsonl(Path(out) / "train_log.jsonl")


def train_losses(out: Path) -> list[float]:
    return [row["loss"] for row in log_rows(out)]


def straight_and_resumed(tmp, cases: dict, steps: int = 6) -> dict:
    """{name: (straight, resumed) output dirs} for cases {name: (world, argv(output_dir, *flags))}: `steps` steps
    straight with a checkpoint half-way, then the second half again from a copy of that checkpoint. The ranks are
    shared: one start per world size for the straight runs and one for the resumed runs, rather than two per case."""
    half = steps // 2
    dirs = {name: (tmp / name / "straight", tmp / name / "resumed") for name in cases}
    worlds = sorted({world for world, _ in cases.values()})
    for world in worlds:
        run_jobs(world, [argv(dirs[name][0], "--max_steps", str(steps), "--save_steps", str(half))
                         for name, (w, argv) in cases.items() if w == world])
    for straight, resumed in dirs.values():
        (resumed / "checkpoints").mkdir(parents=True)
        shutil.copytree(straight / "checkpoints" / f"step-{half}", resumed / "checkpoints" / f"step-{half}")
    for world in worlds:
        run_jobs(world, [argv(dirs[name][1], "--max_steps", str(steps), "--resume_from_checkpoint", "latest")
                         for name, (w, argv) in cases.items() if w == world])
    return dirs


def assert_resumed_exactly(straight, resumed, steps: int = 6) -> None:
    """Bit-exact final weights and the second half's losses identical."""
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), str(difference(b, a))
    assert train_losses(straight)[steps // 2:] == train_losses(resumed)[-(steps // 2):]


def final_weights(run, head, reference: dict, arch_tied: bool) -> tuple[dict, dict]:
    """(export, reference) on the export's keys: a yes_no export is a classifier whose score row is
    lm_head[yes] - lm_head[no] of the reference."""
    final = load_file(str(run / "model.safetensors"))
    if head == "yes_no":
        contract = ScoringContract.read(run)
        head_weight = reference["model.embed_tokens.weight" if arch_tied else "lm_head.weight"]
        reference = {**reference, "score.weight": (head_weight[contract.yes_token_id]
                                                   - head_weight[contract.no_token_id]).unsqueeze(0)}
    return final, {name: reference[name] for name in final}


def initial_state(model_dir) -> dict:
    """A model directory's saved tensors by name."""
    return {name: tensor for f in sorted(model_dir.glob("*.safetensors")) for name, tensor in load_file(str(f)).items()}


# `bigrerank prepare`'s inputs: a BEIR corpus and queries, graded qrels (q1: d1 2, d2 1, d4 judged 0) and a run
CORPUS = {
    "d1": ("Weather", "new york is cold today"),
    "d2": ("", "the weather of new york"),
    "d3": ("Python", "python code"),
    "d4": ("", "what is the weather"),
    "d5": ("", "it is cold in york"),
    "d6": ("", "today is new"),
}
QUERIES = {"q1": "weather in new york", "q2": "python code", "q3": "cold today", "q4": "what is new"}
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t1\nq1\td4\t0\nq2\td3\t1\nq3\td5\t0\nq9\td1\t1\n"
RUN = [("q1", ["d2", "d4", "d5", "d1", "d6", "d3"]), ("q2", ["d3"]), ("q3", ["d5", "d6"]), ("q4", ["d6", "d4", "d2"]),
       ("q8", ["d1"])]


def write_prepare_inputs(tmp_path, corpus=CORPUS, queries=QUERIES, qrels=QRELS, run=RUN):
    """corpus.jsonl, queries.jsonl, qrels.tsv and run.trec in tmp_path."""
    write_beir(tmp_path, corpus, queries)
    (tmp_path / "qrels.tsv").write_text(qrels)
    with open(tmp_path / "run.trec", "w") as f:
        for qid, docs in run:
            for rank, doc_id in enumerate(docs, start=1):
                f.write(f"{qid} Q0 {doc_id} {rank} {10 - rank} bm25\n")
    return tmp_path


def prepare_train(tmp_path, *extra, out="train.jsonl") -> int:
    """`bigrerank prepare train` on write_prepare_inputs' files, into tmp_path/out."""
    return cli.main(["prepare", "train", "--corpus", str(tmp_path / "corpus.jsonl"), "--queries",
                     str(tmp_path / "queries.jsonl"), "--qrels", str(tmp_path / "qrels.tsv"), "--run",
                     str(tmp_path / "run.trec"), "--out", str(tmp_path / out), *extra])


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
