"""Process-group set-up and tear-down for every launcher: deepspeed, torchrun, slurm, or none."""
from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_single_process_env() -> None:
    """A process started without a launcher becomes rank 0 of 1, so DeepSpeed does not look for MPI."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def launched() -> bool:
    """True when a launcher (torchrun, deepspeed, srun) started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(timeout_s: float = 1800) -> bool:
    """Start the process group once (gloo on CPU, nccl on GPU) with a bounded collective timeout.

    Returns whether this call started it (a library caller may own one already).
    """
    import deepspeed

    ensure_single_process_env()
    started = not dist.is_initialized()
    if started:
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   timeout=timedelta(seconds=timeout_s))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return started


def device() -> torch.device:
    """This rank's device: its GPU (set by `init`), or the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Reduce a few numbers over the ranks ("sum", "max" or "min"), on the device the backend needs."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device())
    if dist.is_initialized():
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return tensor.tolist()


def gather(value) -> list:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    if world_size() == 1:
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def every_rank(flag: bool) -> bool:
    """True when `flag` holds on every rank (one all-reduce)."""
    return all_reduce([float(flag)], "min")[0] > 0


def main_first(fn):
    """Run `fn` on rank 0, then on the other ranks (to fill a cache once); rank 0's error is raised on all."""
    error, result = None, None
    if is_main():
        try:
            result = fn()
        except Exception as e:  # re-raised below, on every rank
            error = e
    if world_size() > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise error
    return result if is_main() else fn()


def teardown(wait_for_others: bool = True) -> None:
    """Destroy the process group explicitly; leaving it to interpreter exit can abort a rank.

    Through DeepSpeed's own call, which also forgets the groups it cached, so a later `init` in the same
    process (a library caller training twice) starts clean.
    """
    if dist.is_initialized():
        import deepspeed.comm

        if wait_for_others:
            dist.barrier()
        deepspeed.comm.destroy_process_group()
