"""The engine trains on every shipped config (1 and 2 ranks, fp32 and bf16), resumes exactly, and
refuses bad input before writing anything."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from bigrerank import cli
from tests.dist_harness import run_jobs
from tests.reference import difference
from tests.tiny import tiny_model_dir, write_groups

CONFIGS = ["zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    return tmp, tiny_model_dir(tmp / "model", init_range=0.2), write_groups(tmp / "groups.jsonl", queries=32)


def _argv(model, train, out, config, *extra):
    return ["--model_name_or_path", str(model), "--train_path", str(train), "--output_dir", str(out),
            "--ds_config", f"ds_configs/{config}.json", "--train_group_size", "4", "--max_len", "32",
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--warmup_steps", "2",
            "--logging_steps", "1", "--save_steps", "1000", *extra]


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("world", [1, 2])
def test_loss_goes_down_on_every_config(data, world):
    tmp, model, train = data
    runs = {f"{c}-fp32": _argv(model, train, tmp / f"w{world}-{c}", c, "--max_steps", "12") for c in CONFIGS}
    for config in ("zero0", "zero2", "zero3"):
        runs[f"{config}-bf16"] = _argv(model, train, tmp / f"w{world}-{config}-bf16", config, "--max_steps", "12",
                                       "--bf16")
    run_jobs(world, list(runs.values()))
    for name, argv in runs.items():
        out = tmp / argv[argv.index("--output_dir") + 1].split("/")[-1]
        losses = _losses(out)
        assert len(losses) == 12
        assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, (name, losses)
        log_row = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
        assert {"step", "epoch", "loss", "lr", "grad_norm", "pairs_per_s", "tokens_per_s"} <= set(log_row)
        assert log_row["grad_norm"] > 0 and log_row["pairs_per_s"] > 0
        assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


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
    assert _losses(straight)[steps // 2:] == _losses(resumed)[-(steps // 2):]


RESUME_CASES = [(1, "zero0"), (1, "zero2"), (2, "zero3"), (1, "zero2_offload"), (2, "zero3_offload")]


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory):
    """{(world, config): (straight, resumed) output dirs} for every resume case."""
    tmp = tmp_path_factory.mktemp("resume")
    model = tiny_model_dir(tmp / "model", dropout=0.1, init_range=0.2)
    train = write_groups(tmp / "groups.jsonl", queries=32)
    cases = {f"w{world}-{config}": (world, lambda out, *flags, config=config: _argv(model, train, out, config, *flags))
             for world, config in RESUME_CASES}
    runs = straight_and_resumed(tmp, cases)
    return {(world, config): runs[f"w{world}-{config}"] for world, config in RESUME_CASES}


@pytest.mark.parametrize("world,config", RESUME_CASES)
def test_resume_is_exact(resumed_runs, world, config):
    """6 steps straight == 3 steps, checkpoint, resume, 3 steps (fp32, dropout on: the RNG is restored too)."""
    assert_resumed_exactly(*resumed_runs[(world, config)])


@pytest.mark.parametrize("broken,expected", [
    ('{"qry": {"qid": "q1", "query": "a b"}, "pos": [{"pid": "p", "passage": "c"}], "neg": [{"pid": "n", ',
     r"groups.jsonl:2: malformed JSON"),
    ('{"qry": {"qid": "q1"}, "pos": [{"pid": "p", "passage": "c"}], "neg": [{"pid": "n", "passage": "d"}]}',
     r"groups.jsonl:2: field 'query': missing"),
    ('{"qry": {"qid": "q1", "query": "a"}, "pos": [], "neg": [{"pid": "n", "passage": "d"}]}',
     r"groups.jsonl:2: field 'pos': no positive passage"),
    ('{"qry": {"qid": "q1", "query": "a"}, "pos": [{"pid": "p", "passage": "c"}], "neg": []}',
     r"groups.jsonl:2: field 'neg': no negative passages"),
])
def test_bad_training_lines_are_located_and_nothing_is_written(tmp_path, capsys, broken, expected):
    model = tiny_model_dir(tmp_path / "model")
    good = '{"qry": {"qid": "q0", "query": "a b"}, "pos": [{"pid": "p", "passage": "c"}], ' \
           '"neg": [{"pid": "n", "passage": "d"}]}'
    train = tmp_path / "groups.jsonl"
    train.write_text(good + "\n" + broken + "\n")
    out = tmp_path / "out"
    assert cli.main(["train", *_argv(model, train, out, "zero2", "--max_steps", "1")]) == 2
    assert re.search(expected, capsys.readouterr().err)
    assert not out.exists()


def test_token_id_beyond_vocabulary(tmp_path, capsys):
    model = tiny_model_dir(tmp_path / "model")
    train = tmp_path / "groups.jsonl"
    train.write_text(json.dumps({"qry": {"qid": "q", "query": [5, 99999]}, "pos": [{"pid": "p", "passage": [6]}],
                                 "neg": [{"pid": "n", "passage": [7]}]}) + "\n")
    assert cli.main(["train", *_argv(model, train, tmp_path / "out", "zero2", "--max_steps", "1")]) == 2
    err = capsys.readouterr().err
    assert "groups.jsonl:1: field 'query': token id 99999 outside the tokenizer's vocabulary [0, " in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content,expected", [(None, "DeepSpeed config not found"),
                                              ("{ nope", "malformed JSON")])
def test_missing_or_invalid_ds_config(tmp_path, capsys, content, expected):
    model = tiny_model_dir(tmp_path / "model")
    train = write_groups(tmp_path / "groups.jsonl", queries=8)
    config = tmp_path / "ds.json"
    if content is not None:
        config.write_text(content)
    argv = _argv(model, train, tmp_path / "out", "zero2", "--max_steps", "1")
    argv[argv.index("--ds_config") + 1] = str(config)
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert "ds.json" in err and expected in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make,expected", [(lambda path: None, "no such directory, and the Hugging Face hub could not"),
                                           (lambda path: path.mkdir(), "not a loadable model directory")])
def test_missing_or_unloadable_model(tmp_path, capsys, make, expected):
    train = write_groups(tmp_path / "groups.jsonl", queries=8)
    make(tmp_path / "no_model")
    assert cli.main(["train", *_argv(tmp_path / "no_model", train, tmp_path / "out", "zero2", "--max_steps", "1")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'no_model'}: {expected}" in err
    assert not (tmp_path / "out").exists()


def test_wandb_logs_offline(data, tmp_path, monkeypatch):
    _, model, train = data
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "wandb-run"
    run_jobs(1, [_argv(model, train, out, "zero0", "--max_steps", "3", "--report_to", "wandb", "--run_name", "t")])
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert len(_losses(out)) == 3
