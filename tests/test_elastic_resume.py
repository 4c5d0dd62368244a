"""A checkpoint outlives its topology: saved by 2 ranks it resumes on 1, saved by 1 it resumes on 2, across ZeRO
stages (DeepSpeed's universal format, checkpoints/universal.py). The engine's states right after the resume equal
the saved ones (fp32 weights and both Adam moments, within 1e-6 of each tensor's norm: a conversion copies, it
does not compute), and the next steps train on the same queries as the saved run would have: their losses equal
the uninterrupted run's within 1e-5 (dropout off; only the order of the ranks' sums differs)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from bigrerank import cli
from tests.dist_harness import run_jobs, run_ranks
from tests.tiny import tiny_model_dir, write_groups

STATE_BOUND = 1e-6  # relative to each tensor's norm: a copy, at most re-associated by a re-partitioning
LOSS_BOUND = 1e-5   # relative: the same queries and weights; the ranks' sums run in another order
# name: ((world, ZeRO config, batch, accumulation) saved, the same resumed)
CASES = {"2-ranks-zero2-to-1-rank-zero3": ((2, "zero2", 2, 1), (1, "zero3", 2, 2)),
         "1-rank-zero3-to-2-ranks-zero1": ((1, "zero3", 2, 2), (2, "zero1", 1, 2)),
         "2-ranks-zero0-to-1-rank-zero0": ((2, "zero0", 2, 1), (1, "zero0", 4, 1))}


def _argv(model, train, out, topology, *extra):
    _, config, batch, accum = topology
    return ["--model_name_or_path", str(model), "--train_path", str(train), "--output_dir", str(out),
            "--ds_config", f"ds_configs/{config}.json", "--train_group_size", "4", "--max_len", "32",
            "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", str(accum),
            "--learning_rate", "1e-2", "--warmup_steps", "2", "--logging_steps", "1", "--save_steps", "3",
            "--max_steps", "6", *extra]


def dump_resumed_states(argv: list[str], path: str) -> None:
    """On every rank: build the engine as `train` does, resume, and (rank 0) save the full fp32 states."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    from bigrerank import distributed
    from bigrerank.checkpoints import store
    from bigrerank.commands.train import parse
    from bigrerank.training import trainer

    setup = trainer.prepare(*parse(argv))
    store.load(setup.engine, setup.resume_dir, setup.states_dir)
    optimizer = setup.engine.optimizer
    if hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):  # ZeRO 1-2 map each parameter to its optimizer
        optimizer._hp_optimizer_states_linked = False                # state at a step, not at a load: map it now
        optimizer._lazy_init_hp_params_optimizer_state()
    states = {}
    for name, param in setup.engine.module.named_parameters():  # collectives under ZeRO-3: every rank calls
        states[name] = [safe_get_full_fp32_param(param)] + [safe_get_full_optimizer_state(param, key)
                                                           for key in ("exp_avg", "exp_avg_sq")]
        if states[name][0] is None:  # ZeRO-0 in fp32: the parameter and the torch optimizer's state are whole
            states[name] = [param] + [optimizer.state[param][key] for key in ("exp_avg", "exp_avg_sq")]
    if distributed.is_main():
        torch.save({name: [t.detach().float().cpu() for t in ts] for name, ts in states.items()}, path)


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("elastic")
    model = tiny_model_dir(tmp / "model", init_range=0.2)
    train = write_groups(tmp / "groups.jsonl", queries=32)
    for name, (saved, _) in CASES.items():
        run_jobs(saved[0], [_argv(model, train, tmp / name / "straight", saved)])
    results = {}
    for name, (saved, resumed) in CASES.items():
        dirs = {kind: tmp / name / kind for kind in ("same", "other")}
        for out in dirs.values():
            shutil.copytree(tmp / name / "straight" / "checkpoints" / "step-3", out / "checkpoints" / "step-3")
        for kind, topology in (("same", saved), ("other", resumed)):
            run_ranks(topology[0], dump_resumed_states,
                      _argv(model, train, dirs[kind], topology, "--resume_from_checkpoint", "latest"),
                      str(tmp / name / f"{kind}.pt"))
        run_jobs(resumed[0], [_argv(model, train, dirs["other"], resumed, "--resume_from_checkpoint", "latest")])
        results[name] = tmp / name
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_the_states_right_after_a_resume_on_another_topology_are_the_saved_ones(runs, name):
    same, other = torch.load(runs[name] / "same.pt"), torch.load(runs[name] / "other.pt")
    assert same.keys() == other.keys()
    for param, states in same.items():
        for kind, saved, resumed in zip(("fp32", "exp_avg", "exp_avg_sq"), states, other[param]):
            assert saved.shape == resumed.shape, (param, kind)
            bound = STATE_BOUND * max(saved.norm().item(), 1e-30)
            assert (saved - resumed).norm().item() <= bound, (name, param, kind)
    assert any(states[1].norm() > 0 for states in same.values())  # the moments are real, not zeros on both sides


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_training_continues_on_the_same_queries_after_a_resume_on_another_topology(runs, name):
    straight, resumed = _losses(runs[name] / "straight"), _losses(runs[name] / "other")
    assert len(straight) == 6 and len(resumed) == 3
    for a, b in zip(straight[3:], resumed):
        assert abs(a - b) <= LOSS_BOUND * abs(a), (name, straight, resumed)
    assert (runs[name] / "other" / "model.safetensors").is_file()


def _refused(capsys, monkeypatch, run, *fragments) -> None:
    """`run()` exits 2 with one line naming `fragments`, before any model is built."""
    from bigrerank.training import trainer

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was found")

    monkeypatch.setattr(trainer, "build_engine", refuse)
    capsys.readouterr()
    assert run() == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bigrerank train: error:")]
    assert len(err) == 1 and all(f in err[0] for f in fragments), err


def _resume_refused(tmp_path, capsys, monkeypatch, saved, resumed, *fragments) -> None:
    """3 steps on `saved` (world, config, batch, accumulation), then a resume on `resumed`: refused, naming
    `fragments`."""
    model, train = tiny_model_dir(tmp_path / "model"), write_groups(tmp_path / "groups.jsonl", queries=16)
    out = tmp_path / "out"
    assert cli.main(["train", *_argv(model, train, out, saved, "--max_steps", "3")]) == 0
    _refused(capsys, monkeypatch, lambda: cli.main(["train", *_argv(
        model, train, out, resumed, "--max_steps", "3", "--resume_from_checkpoint", "latest")]), *fragments)


def test_another_topology_that_changes_the_queries_per_step_is_refused_with_the_fix(tmp_path, capsys, monkeypatch):
    _resume_refused(tmp_path, capsys, monkeypatch, (1, "zero2", 4, 1), (1, "zero2", 2, 1),
                    "keeps the queries per optimizer step", "took 4", "this one 2", "--gradient_accumulation_steps 2")


def test_a_zero0_checkpoint_is_not_resumed_on_another_stage(tmp_path, capsys, monkeypatch):
    _resume_refused(tmp_path, capsys, monkeypatch, (1, "zero0", 2, 1), (1, "zero2", 2, 1),
                    "at ZeRO-2 on 1 rank(s)", "converts ZeRO 1-3 checkpoints only")


def test_rotation_deletes_a_tag_s_universal_conversion_with_it(tmp_path):
    from bigrerank.checkpoints import store

    for step in (1, 2, 3):
        (tmp_path / f"step-{step}").mkdir()
        (tmp_path / f"step-{step}" / store.MANIFEST).write_text(json.dumps({"files": [], "sizes": {}}))
        (tmp_path / store.UNIVERSAL_DIR / f"step-{step}").mkdir(parents=True)
    (tmp_path / "latest").write_text("step-3")
    store.rotate(tmp_path, keep=2)
    assert store.complete_tags(tmp_path) == ["step-2", "step-3"]
    assert sorted(p.name for p in (tmp_path / store.UNIVERSAL_DIR).iterdir()) == ["step-2", "step-3"]
