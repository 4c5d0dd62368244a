"""Faults: preemption signals, a killed rank, non-finite losses and incomplete checkpoints never lose more than
the work since the last complete checkpoint, never hang, and never write a checkpoint from NaN weights."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from bigrerank import distributed, losses
from bigrerank.checkpoints import store
from bigrerank.commands.train import parse
from bigrerank.distributed import free_port
from bigrerank.training import trainer
from bigrerank.training.preemption import PREEMPTED_EXIT_CODE
from tests.dist_harness import run_jobs, run_ranks
from tests.helpers import ROOT, launch_env, train_argv
from tests.tiny import tiny_model_dir, write_groups

def _wait_for(predicate, timeout: float, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(0.2)
    return False


def _log_rows(out: Path) -> int:
    log = out / "train_log.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    return tmp, tiny_model_dir(tmp / "model", dropout=0.1, init_range=0.2), write_groups(tmp / "g.jsonl", 64)


@pytest.mark.slow
def test_sigusr1_checkpoints_exits_for_requeue_and_resumes_exactly(setup, tmp_path):
    tmp, model, train = setup
    reference = tmp_path / "reference"
    run_jobs(1, [train_argv(model, train, reference, "zero2", max_steps=200, learning_rate="1e-3")])

    out = tmp_path / "preempted"
    argv = [sys.executable, str(ROOT / "launch/train.py"),
            *train_argv(model, train, out, "zero2", max_steps=200, learning_rate="1e-3")]
    proc = subprocess.Popen(argv, env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: _log_rows(out) >= 5, 120, proc), proc.stderr.read()
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err
    tags = store.complete_tags(out / "checkpoints")
    assert tags and (out / "checkpoints" / "latest").read_text() == tags[-1]
    assert int(tags[-1].split("-")[1]) < 200 and not (out / "model.safetensors").exists()

    resumed = subprocess.run(argv + ["--resume_from_checkpoint", "latest"], env=launch_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert _same_weights(out, reference)


def test_train_returns_a_preempted_result_instead_of_exiting(setup, tmp_path):
    """The library function tests and benchmarks call does not exit the process: a preemption signal ends the
    run after its step with a checkpoint and a result that says so (`main` maps it to exit code 75)."""
    tmp, model, train = setup
    out = tmp_path / "signalled"
    steps = {"n": 0}

    def signal_in_step_two(engine):
        steps["n"] += 1
        if steps["n"] == 2:
            os.kill(os.getpid(), signal.SIGUSR1)

    try:
        result = trainer.train(*parse(train_argv(model, train, out, "zero2", max_steps=10, learning_rate="1e-3")),
                               on_reduced=signal_in_step_two)
    finally:
        distributed.teardown(wait_for_others=False)
    assert result.preempted and result.step == 2
    assert store.complete_tags(out / "checkpoints") == ["step-2"] and not (out / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler was given back


@pytest.mark.slow
def test_killed_rank_ends_the_run_and_the_rerun_resumes_to_the_same_weights(setup, tmp_path):
    tmp, model, train = setup
    reference, out = tmp_path / "reference", tmp_path / "killed"

    def launch(output_dir, *extra):  # torchrun for both runs: the same (shared-memory) reduction order
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), str(ROOT / "launch/train.py"),
                *train_argv(model, train, output_dir, "zero2", *extra, max_steps=120, save_steps=20, ddp_timeout=30,
                            learning_rate="1e-3")]

    straight = subprocess.run(launch(reference), env=launch_env(), capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    proc = subprocess.Popen(launch(out), env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait_for(lambda: bool(store.complete_tags(out / "checkpoints")), 180, proc)
    workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "launch/train.py" in " ".join(c.cmdline())]
    assert len(workers) == 2
    started = time.time()
    workers[1].send_signal(signal.SIGKILL)
    proc.wait(timeout=120)  # bounded: no rank hangs in a collective
    assert proc.returncode != 0 and time.time() - started < 120
    assert not (out / "model.safetensors").exists()

    rerun = subprocess.run(launch(out, "--resume_from_checkpoint", "latest"), env=launch_env(), capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed_at = [line for line in rerun.stderr.splitlines() if "resumed from" in line]
    assert _same_weights(out, reference), (resumed_at, _log_rows(out), (out / "train_log.jsonl").read_text()[-600:],
                                           (reference / "train_log.jsonl").read_text()[-600:])


def test_non_finite_losses_are_skipped_then_stop_without_a_checkpoint(setup, tmp_path, monkeypatch):
    tmp, model, train = setup
    calls = {"n": 0}

    def sometimes_nan(scores, teacher=None, temperature=1.0):
        calls["n"] += 1
        loss = losses.lce_loss(scores, temperature=temperature)
        return loss * float("nan") if calls["n"] in (2, 4, 5, 6) else loss

    monkeypatch.setitem(losses.LOSSES, "lce", losses.LossSpec(sometimes_nan))
    out = tmp_path / "nan"
    try:
        with pytest.raises(RuntimeError, match="3 optimizer steps in a row had a non-finite loss"):
            trainer.train(*parse(train_argv(model, train, out, "zero2", max_steps=20, save_steps=3,
                                            max_nonfinite_steps=3, learning_rate="1e-3")))
    finally:
        distributed.teardown(wait_for_others=False)
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["loss"] == rows[0]["loss"] and rows[1]["loss"] != rows[1]["loss"]  # step 2: NaN, skipped
    assert store.complete_tags(out / "checkpoints") == ["step-3"]  # saved before the run of NaNs, not after
    assert not (out / "model.safetensors").exists()


def test_incomplete_checkpoints_are_never_chosen(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        tag = root / f"step-{step}"
        tag.mkdir(parents=True)
        (tag / "weights.pt").write_text("x")
        (tag / store.MANIFEST).write_text(json.dumps({"step": step, "files": ["weights.pt"]}))
    (root / "step-30" / "weights.pt").unlink()  # a file lost after the save
    (root / "step-40").mkdir()  # a save that never finished
    assert store.complete_tags(root) == ["step-10", "step-20"]
    assert "step-30 skipped: missing files: weights.pt" in caplog.text
    assert "step-40 skipped: no COMPLETE marker" in caplog.text
    assert store.resume_point(root, "latest") == root / "step-20"
    (root / "latest").write_text("step-20")
    with pytest.raises(ValueError, match="cannot resume from .*step-40"):
        store.resume_point(root, str(root / "step-40"))
    store.rotate(root, keep=1)
    assert store.complete_tags(root) == ["step-20"]


def test_no_checkpoint_is_ever_written_from_non_finite_weights(setup, tmp_path):
    tmp, model, train = setup
    out = tmp_path / "poisoned"
    seen = {"steps": 0}

    def poison_after_step_two(engine):
        seen["steps"] += 1
        if seen["steps"] == 3:  # before the third update: the weights that step 4 would save are NaN
            with torch.no_grad():
                engine.module.classifier.weight.fill_(float("nan"))

    try:
        with pytest.raises(RuntimeError, match="weights are not finite at step 4: no checkpoint written"):
            # ZeRO-0: the module holds the master weights
            argv = train_argv(model, train, out, "zero0", max_steps=10, save_steps=2, learning_rate="1e-3")
            trainer.train(*parse(argv), on_reduced=poison_after_step_two)
    finally:
        distributed.teardown(wait_for_others=False)
    assert store.complete_tags(out / "checkpoints") == ["step-2"]
    assert not (out / "checkpoints" / "step-4").exists() and not (out / "model.safetensors").exists()


def _finite_checks_on_zero3_partitions(argv: list[str], result_file: str):
    engine = trainer.train(*parse(argv)).engine
    padded = 0
    with torch.no_grad():
        for param in engine.module.parameters():  # padding holds whatever memory held: here, NaN
            held = store.held_values(param).numel()
            param.ds_tensor[held:] = float("nan")
            padded += param.ds_tensor.numel() - held
    with_nan_padding = store.weights_finite(engine)
    if distributed.rank() == 1:
        with torch.no_grad():
            store.held_values(engine.module.classifier.weight)[-1] = float("nan")
    with_a_nan_weight = store.weights_finite(engine)
    totals = distributed.all_reduce([padded], "sum")
    if distributed.is_main():
        Path(result_file).write_text(json.dumps([totals[0], with_nan_padding, with_a_nan_weight]))


@pytest.mark.slow
def test_zero3_partition_padding_is_not_checked_as_weights(setup, tmp_path):
    """ZeRO-3 pads a parameter's last partitions with uninitialised memory (any bits, NaN included): the
    finite-weights check before each checkpoint reads only the weights, so it is neither fooled by the padding
    nor blind to a NaN weight on another rank."""
    tmp, model, train = setup
    argv = train_argv(model, train, tmp_path / "out", "zero3", max_steps=2, learning_rate="1e-3")
    run_ranks(2, _finite_checks_on_zero3_partitions, argv, str(tmp_path / "result.json"))
    padded, with_nan_padding, with_a_nan_weight = json.loads((tmp_path / "result.json").read_text())
    assert padded > 0  # the classifier bias (1 value) alone pads rank 1's partition
    assert with_nan_padding is True and with_a_nan_weight is False


@pytest.mark.parametrize("stage,precision", [(2, "fp32"), (3, "bf16"), (0, "bf16"), (0, "fp32")])
def test_a_non_finite_gradient_with_a_finite_loss_skips_that_update(setup, tmp_path, stage, precision):
    """A step whose reduced gradient holds an inf is skipped (weights and schedule unchanged), counted in the
    log's skipped_steps, and training goes on: DeepSpeed's own check (ZeRO 1-3, ZeRO-0 in bf16/fp16), and
    bigrerank's `skip_non_finite` for ZeRO-0 in fp32, where DeepSpeed steps a plain torch optimizer."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad, safe_set_full_grad

    tmp, model, train = setup
    out = tmp_path / f"zero{stage}-{precision}"
    seen = {"steps": 0, "weights": []}

    def poison_step_two(engine):
        seen["steps"] += 1
        weight = engine.module.classifier.weight
        master = safe_get_full_fp32_param(weight)  # None on ZeRO-0: the module holds the weights
        seen["weights"].append((weight.detach() if master is None else master).float().clone())  # before the update
        if seen["steps"] == 2:
            grad = safe_get_full_grad(weight).clone()
            grad[0, 0] = float("inf")
            safe_set_full_grad(weight, grad)

    argv = train_argv(model, train, out, f"zero{stage}", max_steps=5, bf16=precision == "bf16", learning_rate="1e-3")
    try:
        trainer.train(*parse(argv), on_reduced=poison_step_two)
    finally:
        distributed.teardown(wait_for_others=False)
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["skipped_steps"] for row in rows] == [0, 1, 1, 1, 1]
    assert rows[1]["grad_norm"] == float("inf") and all(r["grad_norm"] < float("inf") for r in rows[2:])
    before_two, before_three, before_five = seen["weights"][1], seen["weights"][2], seen["weights"][4]
    assert torch.equal(before_two, before_three)  # the poisoned update was not applied
    assert not torch.equal(before_three, before_five)  # later ones were (the warm-up starts at lr 0)
    final = load_file(str(out / "model.safetensors"))
    assert all(torch.isfinite(tensor).all() for tensor in final.values())


def test_skip_non_finite_updates_leaves_weights_and_optimizer_state_alone():
    from bigrerank.training.skip_non_finite import SkipNonFiniteUpdates

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = SkipNonFiniteUpdates(torch.optim.AdamW([weight], lr=0.1))
    weight.grad = torch.tensor([1.0, float("nan"), 1.0])
    optimizer.step()
    assert optimizer.overflow and torch.equal(weight.detach(), torch.ones(3)) and not optimizer.state
    weight.grad = torch.tensor([1.0, 2.0, 3.0])
    optimizer.step()
    assert not optimizer.overflow and not torch.equal(weight.detach(), torch.ones(3))
    assert optimizer.state[weight]["step"] == 1  # the skipped step was not counted
    assert optimizer.state_dict()["state"][0]["step"] == 1  # delegated: DeepSpeed checkpoints it
