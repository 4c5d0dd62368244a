"""The engine trains on every shipped config (1 and 2 ranks, fp32 and bf16), resumes exactly, and
refuses bad input before writing anything."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file

from bigrerank import cli, distributed
from tests.dist_harness import run_jobs
from tests.helpers import (CONFIGS, assert_resumed_exactly, initial_state, straight_and_resumed, train_argv,
                           train_losses)
from tests.tiny import tiny_model_dir, with_teacher_scores, write_groups
from tests.tiny_decoder import tiny_decoder_dir

# a batch of 4 queries and a high learning rate: the loss falls within a dozen steps
SETTINGS = {"per_device_train_batch_size": 4, "learning_rate": "1e-2", "warmup_steps": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    return tmp, tiny_model_dir(tmp / "model", init_range=0.2), write_groups(tmp / "groups.jsonl", queries=32)


# name: (model, ZeRO config, settings): each mode of the multi-rank proofs, and each shipped config, once
ONE_RANK_MODES = {
    "cached-accumulated-collaborative": ("bert", "zero1", {"grad_cache_chunk_size": 3,
                                                          "gradient_accumulation_steps": 2, "collaborative": True}),
    "checkpointed-bf16": ("bert", "zero2", {"gradient_checkpointing": True, "bf16": True}),
    "lora-cached": ("bert", "zero3_offload", {"lora_r": 4, "lora_alpha": 8, "grad_cache_chunk_size": 3}),
    "distill": ("teacher scores", "zero3", {"loss": "distill"}),
    "qwen3-yes_no-lora": ("qwen3", "zero2_offload", {"score_head": "yes_no", "max_len": 192, "lora_r": 4,
                                                     "lora_alpha": 8}),
    "llama-classifier": ("llama", "zero0", {"score_head": "classifier", "max_len": 192}),
}


@pytest.mark.parametrize("mode", ONE_RANK_MODES)
def test_every_training_mode_trains_on_one_rank(data, tmp_path, mode):
    """A few steps in this process: finite losses logged each step, and an export that moved from the start."""
    kind, config, settings = ONE_RANK_MODES[mode]
    _, model, train = data
    if kind == "teacher scores":
        train = with_teacher_scores(write_groups(tmp_path / "teacher.jsonl", queries=8))
    elif kind != "bert":
        model = tiny_decoder_dir(tmp_path / kind, kind, init_range=0.2, tie=kind == "qwen3")
    out = tmp_path / "out"
    try:
        argv = train_argv(model, train, out, config, **{**SETTINGS, "max_steps": 3, **settings})
        assert cli.main(["train", *argv]) == 0
    finally:
        distributed.teardown(wait_for_others=False)
    losses = train_losses(out)
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses), losses
    exported, initial = load_file(str(out / "model.safetensors")), initial_state(model)
    assert all(torch.isfinite(tensor).all() for tensor in exported.values())
    shared = exported.keys() & initial.keys()
    assert shared and any(not torch.equal(exported[name], initial[name]) for name in shared)


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_loss_goes_down_on_every_config(data, world):
    tmp, model, train = data
    runs = {f"{c}-fp32": train_argv(model, train, tmp / f"w{world}-{c}", c, max_steps=12, **SETTINGS) for c in CONFIGS}
    for config in ("zero0", "zero2", "zero3"):
        runs[f"{config}-bf16"] = train_argv(model, train, tmp / f"w{world}-{config}-bf16", config, max_steps=12,
                                            bf16=True, **SETTINGS)
    run_jobs(world, list(runs.values()))
    for name, argv in runs.items():
        out = tmp / argv[argv.index("--output_dir") + 1].split("/")[-1]
        losses = train_losses(out)
        assert len(losses) == 12
        assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, (name, losses)
        log_row = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
        assert {"step", "epoch", "loss", "lr", "grad_norm", "pairs_per_s", "tokens_per_s"} <= set(log_row)
        assert log_row["grad_norm"] > 0 and log_row["pairs_per_s"] > 0
        assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


RESUME_CASES = [(1, "zero0"), (1, "zero2"), (2, "zero3"), (1, "zero2_offload"), (2, "zero3_offload")]


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory):
    """{(world, config): (straight, resumed) output dirs} for every resume case."""
    tmp = tmp_path_factory.mktemp("resume")
    model = tiny_model_dir(tmp / "model", dropout=0.1, init_range=0.2)
    train = write_groups(tmp / "groups.jsonl", queries=32)
    cases = {f"w{world}-{config}": (world, lambda out, *flags, config=config: train_argv(model, train, out, config,
                                                                                        *flags, **SETTINGS))
             for world, config in RESUME_CASES}
    runs = straight_and_resumed(tmp, cases)
    return {(world, config): runs[f"w{world}-{config}"] for world, config in RESUME_CASES}


@pytest.mark.slow
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
    assert cli.main(["train", *train_argv(model, train, out, "zero2", max_steps=1, **SETTINGS)]) == 2
    assert re.search(expected, capsys.readouterr().err)
    assert not out.exists()


def test_token_id_beyond_vocabulary(tmp_path, capsys):
    model = tiny_model_dir(tmp_path / "model")
    train = tmp_path / "groups.jsonl"
    train.write_text(json.dumps({"qry": {"qid": "q", "query": [5, 99999]}, "pos": [{"pid": "p", "passage": [6]}],
                                 "neg": [{"pid": "n", "passage": [7]}]}) + "\n")
    assert cli.main(["train", *train_argv(model, train, tmp_path / "out", "zero2", max_steps=1, **SETTINGS)]) == 2
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
    argv = train_argv(model, train, tmp_path / "out", "zero2", max_steps=1, **SETTINGS)
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
    argv = train_argv(tmp_path / "no_model", train, tmp_path / "out", "zero2", max_steps=1, **SETTINGS)
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'no_model'}: {expected}" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_wandb_logs_offline(data, tmp_path, monkeypatch):
    _, model, train = data
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "wandb-run"
    run_jobs(1, [train_argv(model, train, out, "zero0", max_steps=3, report_to="wandb", run_name="t", **SETTINGS)])
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert len(train_losses(out)) == 3
