"""Run code inside W spawned ranks (gloo on CPU) that share one process group.

`run_jobs` runs the same list of training jobs on every rank, in order and in-process, so one DeepSpeed
start serves many configurations. A failure on any rank is raised in the test with its traceback.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import traceback

from bigrerank.distributed import free_port


def _full_gradients(engine) -> dict:
    from deepspeed.utils import safe_get_full_grad

    return {name: safe_get_full_grad(p).detach().float().cpu() for name, p in engine.module.named_parameters()
            if p.requires_grad}


def gradient_recorder(directory: str, extra=None):
    """An on_reduced hook saving each step's full reduced gradients (rank 0) to directory/step-N.pt."""
    import torch

    from bigrerank import distributed

    counter = {"step": 0}

    def record(engine):
        grads = _full_gradients(engine)  # collective under ZeRO-3: every rank calls it
        counter["step"] += 1
        if distributed.is_main():
            os.makedirs(directory, exist_ok=True)
            torch.save({"grads": grads, **(extra() if extra else {})},
                       os.path.join(directory, f"step-{counter['step']}.pt"))

    return record


def _rank_main(rank: int, world: int, port: int, fn, args, errors):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    from bigrerank import distributed

    try:
        fn(*args)
        distributed.teardown()
    except BaseException:
        errors.put(f"rank {rank}: {traceback.format_exc()}")
        distributed.teardown(wait_for_others=False)
        raise
    finally:
        errors.close()
        errors.join_thread()
    # Results are on disk and the group is torn down: skip interpreter-exit destructors, which rarely abort a
    # finished rank (seen with DeepSpeed's CPU communication op).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(world: int, fn, *args, timeout: float = 900) -> None:
    """Call fn(*args) on each of `world` spawned ranks (fn must be importable); raise any rank's error."""
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, fn, args, errors)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    assert not alive, f"ranks still running after {timeout}s"
    assert not messages, "\n".join(messages)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


def train_jobs(jobs: list) -> None:
    from bigrerank.commands.train import parse
    from bigrerank.training import trainer

    for job in jobs:
        argv, grads_dir = job if isinstance(job, tuple) else (job, None)
        trainer.train(*parse(argv), on_reduced=gradient_recorder(grads_dir) if grads_dir else None)


def run_jobs(world: int, jobs: list, timeout: float = 900) -> None:
    """jobs: training argv lists, or (argv, gradients_dir) to record each step's reduced gradients."""
    run_ranks(world, train_jobs, jobs, timeout=timeout)
