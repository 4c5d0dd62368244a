"""Nothing silently wrong, nothing lost: one meaning of "latest", no stale completion markers, reused output
directories refused or cleared of our files only, resumes with other settings refused, and the run's mistakes
found before any model loads."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bigrerank import cli
from bigrerank.checkpoints import store
from bigrerank.checkpoints.consolidate import consolidate, locate
from bigrerank.errors import InputError
from bigrerank.training import trainer
from bigrerank.training.preemption import PREEMPTED_EXIT_CODE
from tests.helpers import ROOT, launch_env, train_argv
from tests.tiny import tiny_model_dir, write_groups

def _fake_tags(root: Path, steps, pointer: str | None = None) -> None:
    for step in steps:
        tag = root / f"step-{step}"
        tag.mkdir(parents=True)
        (tag / "weights.pt").write_text("w" * step)
        (tag / store.MANIFEST).write_text(json.dumps({"step": step, "files": ["weights.pt"],
                                                      "sizes": {"weights.pt": step}}))
    if pointer:
        (root / "latest").write_text(pointer)


def test_latest_means_the_same_checkpoint_to_resume_rotation_and_consolidation(tmp_path):
    """A run resumed from step-20 of a directory that also holds a later step-30 (the abandoned trajectory) moved
    `latest` to step-20: resume, consolidation and rotation all follow it, not the highest step."""
    root = tmp_path / "checkpoints"
    _fake_tags(root, (10, 20, 30), pointer="step-20")
    assert store.latest(root) == root / "step-20"
    assert store.resume_point(root, "latest") == root / "step-20"
    assert store.resume_point(root, str(root)) == root / "step-20"
    assert store.resume_point(root, str(tmp_path)) == root / "step-20"  # the run's output directory
    assert locate(root) == (root, "step-20")
    store.rotate(root, keep=1)
    assert (root / "step-20").is_dir() and not (root / "step-10").exists()


def test_latest_falls_back_before_a_tag_whose_resave_was_cut_short(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    _fake_tags(root, (10, 20, 30), pointer="step-30")
    (root / "step-30" / store.MANIFEST).unlink()  # a re-save of step-30 removed its marker, then died
    for found in (store.latest(root), store.resume_point(root, "latest"), root / locate(root)[1]):
        assert found == root / "step-20"
    assert "step-30 skipped: no COMPLETE marker" in caplog.text


class _EngineDyingInSave:
    """Enough of a DeepSpeed engine for store.save: its checkpoint write dies half-way (a kill, a full disk)."""

    def __init__(self):
        self.module, self.optimizer = torch.nn.Linear(2, 1), None
        self.marker_seen_while_writing = None

    def zero_optimization_stage(self):
        return 0

    def save_checkpoint(self, root, tag, client_state, save_latest):
        tag_dir = Path(root) / tag
        self.marker_seen_while_writing = (tag_dir / store.MANIFEST).exists()
        (tag_dir / "weights.pt").write_text("torn")
        raise OSError("No space left on device")


def test_a_resave_removes_the_completion_marker_before_writing(tmp_path):
    root = tmp_path / "checkpoints"
    _fake_tags(root, (10, 20), pointer="step-20")
    engine = _EngineDyingInSave()
    with pytest.raises(OSError, match="No space left"):
        store.save(engine, root, 20, {"step": 20}, None, None, keep=None)
    assert engine.marker_seen_while_writing is False
    assert store.complete_tags(root) == ["step-10"] and store.latest(root) == root / "step-10"


def test_a_truncated_file_makes_a_checkpoint_incomplete_and_is_named(tmp_path):
    root = tmp_path / "checkpoints"
    _fake_tags(root, (10, 20), pointer="step-20")
    (root / "step-20" / "weights.pt").write_text("w" * 7)  # same name, fewer bytes
    reason = store.incomplete_reason(root / "step-20")
    assert reason == f"{root / 'step-20' / 'weights.pt'} has 7 bytes, the save wrote 20 (truncated or replaced)"
    assert store.latest(root) == root / "step-10"
    with pytest.raises(InputError, match=r"step-20: checkpoint is not complete: .*weights.pt has 7 bytes"):
        consolidate(root, tmp_path / "model", tag="step-20")
    with pytest.raises(InputError, match="cannot resume from .*step-20: .*weights.pt has 7 bytes"):
        store.resume_point(root, str(root / "step-20"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety")
    return tiny_model_dir(tmp / "model", init_range=0.2), write_groups(tmp / "groups.jsonl", queries=16)


def _argv(data, out, *extra):
    """ZeRO-0 with a checkpoint every 2 steps, on the module's model and data."""
    return train_argv(*data, out, "zero0", *extra, learning_rate="1e-3", save_steps=2)


def _train(argv) -> int:
    return cli.main(["train", *argv])


def _no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was found")

    monkeypatch.setattr(trainer, "build_engine", refuse)


def _one_line_error(capsys, *fragments) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bigrerank train: error:")]
    assert len(err) == 1, err
    assert all(f in err[0] for f in fragments), err[0]
    return err[0]


def test_a_fresh_run_refuses_a_directory_holding_a_previous_run(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert _train(_argv(data, out, "--max_steps", "4")) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    _no_model_load(monkeypatch)
    assert _train(_argv(data, out, "--max_steps", "6", "--seed", "7")) == 2
    _one_line_error(capsys, str(out), "holds a previous run (checkpoints, train_log.jsonl, an exported model)",
                    "--overwrite_output_dir",
                    "--resume_from_checkpoint latest")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing touched


def test_overwrite_output_dir_deletes_our_files_only(data, tmp_path):
    out = tmp_path / "out"
    assert _train(_argv(data, out, "--max_steps", "4")) == 0
    (out / "notes.txt").write_text("mine")
    (out / "tokenizer.json").unlink()  # our file, already gone: nothing to delete
    (out / "checkpoints" / "step-4" / "extra").write_text("inside our checkpoints")
    assert _train(_argv(data, out, "--max_steps", "2", "--overwrite_output_dir")) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert store.complete_tags(out / "checkpoints") == ["step-2"]  # the old step-4 was deleted first
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((out / "bigrerank_training.json").read_text())["step"] == 2
    assert (out / "tokenizer.json").is_file()


def test_overwrite_output_dir_is_refused_with_resume_latest(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert _train(_argv(data, out, "--max_steps", "2")) == 0
    _no_model_load(monkeypatch)
    assert _train(_argv(data, out, "--max_steps", "4", "--overwrite_output_dir",
                        "--resume_from_checkpoint", "latest")) == 2
    _one_line_error(capsys, "--overwrite_output_dir would delete the checkpoints")
    assert store.complete_tags(out / "checkpoints") == ["step-2"]


def test_a_resume_with_other_settings_is_refused_naming_each(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert _train(_argv(data, out, "--max_steps", "2")) == 0
    _no_model_load(monkeypatch)
    argv = _argv(data, out, "--max_steps", "4", "--resume_from_checkpoint", "latest", "--learning_rate", "2e-3",
                 "--train_group_size", "3", "--logging_steps", "2")
    assert _train(argv) == 2
    line = _one_line_error(capsys, "step-2", "learning_rate 0.001 -> 0.002", "train_group_size 4 -> 3",
                           "total_steps 2 -> 4")
    assert "logging_steps" not in line  # allowed to change


def test_a_resume_with_changed_data_is_refused(data, tmp_path, capsys, monkeypatch):
    model, train = data
    copy = tmp_path / "groups.jsonl"
    copy.write_text(train.read_text())
    out = tmp_path / "out"
    assert _train(_argv((model, copy), out, "--max_steps", "2")) == 0
    write_groups(copy, queries=16, seed=5)  # same path, other content
    _no_model_load(monkeypatch)
    assert _train(_argv((model, copy), out, "--max_steps", "2", "--resume_from_checkpoint", "latest")) == 2
    _one_line_error(capsys, "data_fingerprint")


def test_a_resume_with_safe_changes_continues_and_says_so(data, tmp_path, caplog):
    out = tmp_path / "out"
    assert _train(_argv(data, out, "--max_steps", "2")) == 0
    assert _train(_argv(data, out, "--max_steps", "2", "--resume_from_checkpoint", "latest", "--save_steps", "5",
                        "--run_name", "again", "--per_device_eval_batch_size", "8")) == 0
    assert "resuming with save_steps 2 -> 5 (allowed" in caplog.text and "run_name None -> 'again'" in caplog.text
    assert "per_device_eval_batch_size 64 -> 8 (allowed" in caplog.text  # evaluation does not change the training


def test_resume_latest_with_nothing_to_resume_starts_fresh_and_says_so(data, tmp_path, caplog):
    out = tmp_path / "out"
    assert _train(_argv(data, out, "--max_steps", "2", "--resume_from_checkpoint", "latest")) == 0
    assert f"--resume_from_checkpoint latest: no complete checkpoint in {out / 'checkpoints'}, starting a fresh run" \
        in caplog.text
    assert store.complete_tags(out / "checkpoints") == ["step-2"]


@pytest.mark.parametrize("make,extra,fragments", [
    (lambda out: out.write_text("x"), [], ["--output_dir is a file"]),
    (lambda out: out.parent.joinpath("file").write_text("x"), ["--output_dir", "{tmp}/file/out"],
     ["--output_dir cannot be created", "file is a file"]),
    (lambda out: None, ["--resume_from_checkpoint", "{tmp}/nowhere"],
     ["cannot resume from", "nowhere: no such checkpoint directory"]),
    (lambda out: None, ["--max_len", "4096"], ["--max_len: max_len 4096 exceeds the model's 128 positions"]),
    (lambda out: None, ["--eval_path", "{tmp}/pairs.jsonl", "--eval_qrels", "{tmp}/qrels.tsv"],
     ["pairs.jsonl: --eval_path: no such file"]),
    (lambda out: out.parent.joinpath("pairs.jsonl").write_text('{"qid": "q", "pid": "p", "qry": "a", "psg": "b"}\n'),
     ["--eval_path", "{tmp}/pairs.jsonl", "--eval_qrels", "{tmp}/qrels.tsv"],
     ["qrels.tsv: --eval_qrels: no such file"]),
    (lambda out: out.parent.joinpath("pairs.jsonl").write_text('{"qid": "q", "qry": "a", "psg": "b"}\n'),
     ["--eval_path", "{tmp}/pairs.jsonl", "--eval_qrels", "{tmp}/pairs.jsonl"],
     ["pairs.jsonl:1: field 'pid': missing (or give the ids file with --eval_ids)"]),
    (lambda out: out.parent.joinpath("ds.json").write_text('{"zero_optimization": {"stage": 4}}'),
     ["--ds_config", "{tmp}/ds.json"], ["ds.json", "zero_optimization.stage", "must be 0, 1, 2 or 3, got 4"]),
])
def test_run_mistakes_are_one_line_before_the_model_loads(data, tmp_path, capsys, monkeypatch, make, extra, fragments):
    out = tmp_path / "out"
    make(out)
    _no_model_load(monkeypatch)
    assert _train(_argv(data, out, "--max_steps", "2", *[e.format(tmp=tmp_path) for e in extra])) == 2
    _one_line_error(capsys, *fragments)
    assert not (tmp_path / "out").is_dir()


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_exits_for_requeue(data, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch/train.py"),
                             *_argv(data, out, "--max_steps", "100000", "--save_steps", "100000")],
                            env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out / "train_log.jsonl").is_file():
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-3000:]
    assert "SIGINT received: checkpointing after this step" in err
    assert store.complete_tags(out / "checkpoints") and not (out / "model.safetensors").exists()


def test_a_second_ctrl_c_aborts_at_once():
    preemption = trainer.Preemption()
    try:
        preemption._handle(signal.SIGINT, None)
        assert preemption.requested
        with pytest.raises(KeyboardInterrupt):
            preemption._handle(signal.SIGINT, None)
    finally:
        preemption.restore()


def test_resume_latest_does_not_start_over_a_finished_run_without_checkpoints(data, tmp_path, capsys, monkeypatch):
    import shutil

    out = tmp_path / "out"
    assert _train(_argv(data, out, "--max_steps", "2")) == 0
    shutil.rmtree(out / "checkpoints")  # the user kept only the model
    _no_model_load(monkeypatch)
    assert _train(_argv(data, out, "--max_steps", "2", "--resume_from_checkpoint", "latest")) == 2
    _one_line_error(capsys, "holds a previous run (train_log.jsonl, an exported model)", "no checkpoint to resume")
    assert (out / "model.safetensors").is_file()


def test_an_unwritable_output_dir_is_one_line_before_the_model_loads(data, tmp_path, capsys, monkeypatch):
    from bigrerank.training import output_dir

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(output_dir.os, "access",  # as a non-root user sees a 0555 directory (root may write anywhere)
                        lambda path, mode: False if Path(path) == locked else real_access(path, mode))
    _no_model_load(monkeypatch)
    assert _train(_argv(data, locked / "out", "--max_steps", "2")) == 2
    _one_line_error(capsys, "--output_dir is not writable", f"({locked} denies writing)")
    assert list(locked.iterdir()) == []


def _damage(path: Path) -> None:
    """A disk or copy fault: the file overwritten in place with zeros, its size unchanged."""
    path.write_bytes(bytes(path.stat().st_size))


def test_a_file_damaged_in_place_is_named_by_consolidate_and_nothing_is_written(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert _train(_argv(data, out, "--max_steps", "2")) == 0
    states = out / "checkpoints" / "step-2" / "mp_rank_00_model_states.pt"
    _damage(states)
    assert store.incomplete_reason(states.parent) is None  # the sizes cannot see it
    capsys.readouterr()
    assert cli.main(["consolidate", str(out / "checkpoints"), str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bigrerank consolidate: error: {states.parent}: checkpoint cannot be read: {states} is damaged: "
                   "its content is not what the save wrote (checksum)"], err
    assert not (tmp_path / "model").exists()


def test_resume_latest_falls_back_past_a_damaged_checkpoint_and_says_so(data, tmp_path, caplog, capsys):
    out = tmp_path / "out"
    assert _train(_argv(data, out, "--max_steps", "4")) == 0  # checkpoints at steps 2 and 4
    _damage(out / "checkpoints" / "step-4" / "mp_rank_00_model_states.pt")
    # a named tag that is damaged: one line naming the file
    assert _train(_argv(data, out, "--max_steps", "4", "--resume_from_checkpoint",
                        str(out / "checkpoints" / "step-4"))) == 2
    _one_line_error(capsys, "cannot resume from", "step-4/mp_rank_00_model_states.pt is damaged")
    # 'latest': the previous complete checkpoint, and the log says which and why
    assert _train(_argv(data, out, "--max_steps", "4", "--resume_from_checkpoint", "latest")) == 0
    assert ("checkpoint step-4 cannot be resumed from" in caplog.text and "mp_rank_00_model_states.pt is damaged"
            in caplog.text and "resuming from the previous one, step-2" in caplog.text)
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4], steps  # the log kept up to the resumed step, then steps 3 and 4 again
    assert store.damaged(out / "checkpoints" / "step-4") is None  # saved anew
