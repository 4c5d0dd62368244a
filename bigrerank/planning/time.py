"""How long a training step takes, known before launch: the model FLOPs of a step over a matmul rate measured here.

FLOPs per token are the benchmarks' count (PaLM, Chowdhery et al. 2022, app. B; bench/common.model_flops): a forward
is 2 x the weights that multiply (`ModelShape.matmul_params`) + 4 x layers x hidden x the pair length (attention);
the backward is twice a forward, or once with LoRA (the frozen weights get no gradient). The gradient cache runs
every forward twice, gradient checkpointing once more in the backward. A pair counts --max_len tokens: padded
batches reach it with long passages, so shorter data trains faster than planned. The rate is a square matmul in
the run's precision, measured on this machine with the threads one rank gets, of which a training step reaches
`MFU` (bench/train_throughput.py, MiniLM-L6, fp32: 65% on machine CPU-C, 2026-12-06).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from .. import hardware
from .shape import ModelShape

MFU = 0.65
RATE_PROBE = {"size": 1024, "seconds": 0.5}  # matmul size and time of the rate measurement


@dataclass(frozen=True)
class StepCost:
    pairs: int             # pairs one rank scores in an optimizer step
    tokens: int            # tokens of those pairs, at --max_len
    flops: float           # model FLOPs of the step on one rank


def step_cost(shape: ModelShape, max_len: int, group_size: int, per_device_batch: int, accumulation: int,
              world: int, collaborative: bool, cached: bool, checkpointing: bool) -> StepCost:
    """One rank's share of an optimizer step."""
    per_query = math.ceil(group_size / world) if collaborative else group_size
    pairs = per_device_batch * per_query * accumulation
    forward = 2 * shape.matmul_params + 4 * shape.layers * shape.hidden * max_len
    backward = (1 if shape.lora_rank else 2) * forward
    forwards = 1 + int(cached) + int(checkpointing)
    return StepCost(pairs, pairs * max_len, (forwards * forward + backward) * pairs * max_len)


def matmul_rate(precision: torch.dtype, ranks_per_node: int, on_gpu: bool) -> float:
    """GFLOP/s of a square matmul: on this machine's GPU, or on its CPU with the threads one of `ranks_per_node`
    ranks gets."""
    if on_gpu:
        return hardware.matmul_gflops(precision, size=8192, seconds=RATE_PROBE["seconds"], device="cuda")
    threads = max(1, int(os.environ.get("OMP_NUM_THREADS", 0)) or (os.cpu_count() or 1) // ranks_per_node)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return hardware.matmul_gflops(precision, **RATE_PROBE)
    finally:
        torch.set_num_threads(before)


def time_estimate(cost: StepCost, rate_gflops: float, total_steps: int | None, world: int) -> dict:
    """{"step_seconds", "total_seconds" (None without a step count), "tokens_per_second" (all ranks),
    "matmul_gflops" (one rank's measured rate)}."""
    seconds = cost.flops / (rate_gflops * 1e9 * MFU)
    return {"step_seconds": seconds, "total_seconds": seconds * total_steps if total_steps else None,
            "tokens_per_second": cost.tokens * world / seconds, "matmul_gflops": rate_gflops}


def total_steps(args, train_path: str | None, world: int) -> int | None:
    """--max_steps, else the epochs over a JSON-lines training file's queries (as training counts them), else None."""
    if args.max_steps > 0:
        return args.max_steps
    if not train_path or not os.path.isfile(train_path):
        return None
    with open(train_path, "rb") as f:
        queries = sum(1 for line in f if line.strip())
    per_step = args.per_device_train_batch_size * (1 if args.collaborative else world) * args.gradient_accumulation_steps
    return math.ceil(args.num_train_epochs * (queries // per_step)) or None
