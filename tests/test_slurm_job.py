"""launch/slurm/train.sbatch on a real slurm cluster (launch/slurm/local_cluster.sh): 2 CPU ranks train and
checkpoint; the time-limit warning (USR1) checkpoints, requeues and resumes the job, which saves the final model.

Jobs are polled with `scontrol show job` rather than `sbatch --wait`, whose back-off adds up to half a minute."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ROOT
from tests.tiny import tiny_model_dir

SBATCH = ROOT / "launch" / "slurm" / "train.sbatch"
USABLE_NODE_STATES = {"idle", "mixed", "allocated", "completing"}
JOB_TIMEOUT_S = 300
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                "PURGED"}


def slurm_unavailable() -> str | None:
    """Why no job can run on this machine's slurm, in the failed command's own words; None when it can."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "slurm is not installed (no sinfo/sbatch on PATH); start one with launch/slurm/local_cluster.sh"
    try:
        probe = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`sinfo` did not answer within 30 s (slurm controller down?)"
    if probe.returncode != 0:
        return f"`sinfo` failed (exit {probe.returncode}): {(probe.stderr or probe.stdout).strip()}"
    states = {s.rstrip("*~#$@+") for s in probe.stdout.split()}
    if not states & USABLE_NODE_STATES:
        return f"no usable slurm node: `sinfo` node states {sorted(states) or 'none'}"
    return None


UNAVAILABLE = slurm_unavailable()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(UNAVAILABLE is not None, reason=f"slurm not running: {UNAVAILABLE}")]


def write_groups(path: Path, queries: int = 8, negatives: int = 3) -> Path:
    words = ["new york weather", "python code", "cold today", "what is it"]
    with open(path, "w") as f:
        for q in range(queries):
            topic = words[q % len(words)]
            f.write(json.dumps({
                "qry": {"qid": f"q{q}", "query": f"{topic} {q}"},
                "pos": [{"pid": f"p{q}", "passage": f"the {topic} of {q}"}],
                "neg": [{"pid": f"n{q}-{n}", "passage": f"{words[(q + n + 1) % len(words)]} {n}"}
                        for n in range(negatives)],
            }) + "\n")
    return path


def job_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "MASTER_PORT"}
    return {**env, "BIGRERANK_PYTHON": sys.executable, "BIGRERANK_DS_CONFIG": "ds_configs/zero1.json",
            "BIGRERANK_MIN_RUN_S": "5", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
            "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_CACHE": str(tmp_path / "datasets_cache")}


def submit(tmp_path: Path, *args: str) -> str:
    """Submit two CPU-only tasks on one node (the script's #SBATCH GPU lines overridden); the job id."""
    command = ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
               "--time=5", "--signal=B:USR1@30", "--job-name=bigrerank-test", f"--output={tmp_path}/slurm-%j.out",
               *args]
    done = subprocess.run(command, cwd=ROOT, env=job_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"sbatch failed (exit {done.returncode}): {done.stderr}"
    return done.stdout.strip().split(";")[0]


def job_state(job_id: str) -> tuple[str, int]:
    """(JobState, Restarts) from `scontrol show job`; ('PURGED', -1) once slurm has forgotten the job."""
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    if shown.returncode != 0:
        return "PURGED", -1
    fields = dict(f.split("=", 1) for f in shown.stdout.split() if "=" in f)
    return fields["JobState"], int(fields["Restarts"])


def job_log(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("slurm-*.out")))


def wait_for(condition, what: str, tmp_path: Path, timeout_s: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}; job log:\n{job_log(tmp_path)}")
        time.sleep(0.5)


def finished(job_id: str, restarts: int = 0):
    return lambda: job_state(job_id)[0] in FINAL_STATES and job_state(job_id)[1] >= restarts


def log_rows(out: Path) -> list[dict]:
    path = out / "train_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_srun_tasks_derive_distinct_ranks_and_the_hostfile(tmp_path):
    script = (f"BIGRERANK_HOSTFILE={tmp_path}/hostfile launch/slurm/deepspeed_hostfile.sh --print-only && "
              f"srun bash -c '\"$0\" -m bigrerank.slurm env > {tmp_path}/env.$SLURM_PROCID' {sys.executable}")
    job_id = submit(tmp_path, f"--wrap={script}")
    try:
        wait_for(finished(job_id), f"job {job_id}", tmp_path, timeout_s=120)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    assert job_state(job_id)[0] in ("COMPLETED", "PURGED"), job_log(tmp_path)
    envs = [dict(line.removeprefix("export ").split("=", 1) for line in (tmp_path / f"env.{r}").read_text().split("\n")
                 if line) for r in (0, 1)]
    assert [(e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"], e["LOCAL_WORLD_SIZE"]) for e in envs] == \
        [("0", "0", "2", "2"), ("1", "1", "2", "2")]
    assert envs[0]["MASTER_ADDR"] == envs[1]["MASTER_ADDR"] and envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"]
    host = envs[0]["MASTER_ADDR"]
    assert (tmp_path / "hostfile").read_text() == f"{host} slots=2\n"
    assert f"deepspeed --hostfile {tmp_path}/hostfile --master_addr {host} --master_port {envs[0]['MASTER_PORT']} " \
           f"launch/train.py --ds_config ds_configs/zero1.json --resume_from_checkpoint latest" in job_log(tmp_path)


def test_sbatch_trains_checkpoints_requeues_on_usr1_and_resumes(tmp_path):
    model, out, max_steps = tiny_model_dir(tmp_path / "model"), tmp_path / "out", 300
    job_id = submit(tmp_path, str(SBATCH), "--model_name_or_path", str(model),
                    "--train_path", str(write_groups(tmp_path / "train.jsonl")), "--output_dir", str(out),
                    "--train_group_size", "4", "--max_len", "32", "--per_device_train_batch_size", "1",
                    "--learning_rate", "1e-3", "--max_steps", str(max_steps), "--save_steps", "100",
                    "--logging_steps", "1")
    try:
        wait_for(lambda: len(log_rows(out)) >= 3, "3 training steps", tmp_path)
        # What slurm does --signal seconds before the time limit: USR1 to the batch script.
        subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True, timeout=30)
        wait_for(finished(job_id, restarts=1), f"job {job_id} to be requeued and finish", tmp_path)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    log = job_log(tmp_path)
    assert job_state(job_id)[0] in ("COMPLETED", "PURGED"), log
    preempted = re.search(r"checkpoint at step (\d+) written after a preemption signal", log)
    assert preempted, f"the first run finished before USR1 took effect:\n{log}"
    saved = int(preempted.group(1))
    assert 3 <= saved < max_steps
    assert f"requeueing job {job_id}" in log and "(restart 1)" in log
    assert f"resumed from {out / 'checkpoints' / f'step-{saved}'} at step {saved}" in log

    rows = log_rows(out)
    assert [r["step"] for r in rows] == list(range(1, max_steps + 1))  # resumed right after the checkpoint
    assert all(math.isfinite(r["loss"]) and r["pairs_per_s"] > 0 for r in rows)
    checkpoints = out / "checkpoints"
    for step in sorted({saved, 100, 200, max_steps}):
        assert (checkpoints / f"step-{step}" / "COMPLETE").is_file(), step
    assert (checkpoints / "latest").read_text().strip() == f"step-{max_steps}"
    trained, initial = load_file(out / "model.safetensors"), load_file(model / "model.safetensors")
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
    assert log.rstrip().splitlines()[-1].startswith("bigrerank: ranks exited with status 0")
