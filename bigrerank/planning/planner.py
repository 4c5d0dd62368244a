"""The planner: a training configuration's memory per rank and per node, its verdict, the cheapest change that fits
and the largest group, as a report; `bigrerank plan` prints it, and training checks it before its model loads
(`check_training`).

A configuration is the training settings (the `train` command's dataclasses) on some `Hardware`; a change is a dict
of training flags {name: value} (advice.py).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from pathlib import Path

from .. import ds_config
from ..errors import InputError
from ..model import load_config
from . import advice
from .estimate import Hardware, Plan, Setup, alive_pairs, estimate
from .shape import model_shape
from .time import MFU, matmul_rate, step_cost, time_estimate, total_steps
from .sizes import format_size

log = logging.getLogger("bigrerank.plan")


def machine_memory() -> int:
    import psutil

    return psutil.virtual_memory().total


def chunk_pairs(args, max_len: int) -> int:
    """Pairs of a gradient-cache chunk as planned: --grad_cache_chunk_size, or as many pairs of --max_len tokens as
    --grad_cache_max_tokens holds (0: no cache)."""
    return args.grad_cache_chunk_size or args.grad_cache_max_tokens // max_len


class Planner:
    """Plans a training configuration and variants of it ({flag: value} changes of the training flags)."""

    def __init__(self, model_args, data_args, args, hardware: Hardware, raw_ds_config: dict, config=None,
                 score_head: str | None = None):
        self.model_args, self.data_args, self.args, self.hardware = model_args, data_args, args, hardware
        self.raw_ds_config = raw_ds_config
        self.config = config if config is not None else load_config(model_args.model_name_or_path)
        self.score_head = score_head or getattr(model_args, "score_head", None) or "classifier"
        self._shapes: dict = {}

    def _shape(self, model_args):
        key = (model_args.lora_r, tuple(model_args.lora_target_modules or ()))
        if key not in self._shapes:
            self._shapes[key] = model_shape(copy.deepcopy(self.config), model_args, self.score_head)
        return self._shapes[key]

    def _ds_config(self, choice, args) -> tuple[dict, str]:
        """(raw config, path): the given one, or for ("zero", stage, offload) the one of that kind beside it, else
        the packaged one."""
        if choice is None:
            return self.raw_ds_config, args.ds_config
        _, stage, offload = choice
        name = f"zero{stage}{'_offload' if offload else ''}.json"
        beside = Path(args.ds_config).parent / name
        path = beside if beside.is_file() else ds_config.PACKAGED_CONFIGS / name
        return ds_config.load(path), str(path)

    def setup(self, changes: dict | None = None) -> tuple[Setup, dict]:
        changes = dict(changes or {})
        raw, path = self._ds_config(changes.pop("ds_config", None), self.args)
        model_args, data_args, args = (dataclasses.replace(a) for a in (self.model_args, self.data_args, self.args))
        for name, value in changes.items():
            setattr(next(a for a in (model_args, data_args, args) if hasattr(a, name)), name, value)
        shape = self._shape(model_args)
        # fp16 is refused on a CPU by the config check; the plan may be for GPUs elsewhere: resolve as bf16
        resolving = dataclasses.replace(args, fp16=False, bf16=args.bf16 or args.fp16)
        steps = args.max_steps if args.max_steps > 0 else 1
        resolved = ds_config.fill_auto(raw, resolving, self.hardware.world, steps, shape.hidden, path=path)
        setup = Setup(shape, resolved, data_args.train_group_size, data_args.max_len,
                      args.per_device_train_batch_size, chunk_pairs(args, data_args.max_len), args.collaborative,
                      args.gradient_checkpointing, args.bf16 or args.fp16)
        return setup, {"ds_config": path}

    def time(self) -> dict | None:
        """The configuration's time (planning/time.py), or None where its device is not here to measure."""
        import torch

        args, setup = self.args, self.setup()[0]
        dtype = ds_config.training_dtype(args.bf16, args.fp16)
        if self.hardware.gpus_per_node and not torch.cuda.is_available():
            return None
        rate = matmul_rate(dtype, self.hardware.ranks_per_node, on_gpu=bool(self.hardware.gpus_per_node))
        world = self.hardware.world
        cost = step_cost(setup.shape, setup.max_len, setup.group_size, setup.per_device_batch,
                         args.gradient_accumulation_steps, world, setup.collaborative, bool(setup.chunk_size),
                         setup.checkpointing)
        return time_estimate(cost, rate, total_steps(args, self.data_args.train_path, world), world)

    def plan(self, changes: dict | None = None) -> Plan:
        return estimate(self.setup(changes)[0], self.hardware)

    def verdict(self) -> tuple[Plan, dict | None, int]:
        """(the plan as given, the cheapest change that fits or None, the largest group that fits)."""
        plan = self.plan()
        setup, _ = self.setup()
        zero = setup.ds.get("zero_optimization", {}) or {}
        settings = {"grad_cache_chunk_size": self.args.grad_cache_chunk_size,
                    "gradient_checkpointing": self.args.gradient_checkpointing,
                    "zero_stage": int(zero.get("stage", 0)),
                    "offload": (zero.get("offload_optimizer") or {}).get("device", "none") != "none",
                    "lora_r": self.model_args.lora_r}
        change = None if plan.fits else advice.cheapest_fit(self.plan, settings,
                                                              alive_pairs(setup, self.hardware.world)[1])
        return plan, change, advice.largest_group(self.plan)


def suggested_command(argv: list[str], changes: dict, planner: Planner, drop=()) -> str:
    """`bigrerank train …` with `changes` applied to the training flags of `argv`, the flags `drop` left out."""
    out, skip = [], False
    names = {f"--{name}" for name in drop}
    resolved = dict(changes)
    if "ds_config" in resolved:
        resolved["ds_config"] = planner.setup({"ds_config": resolved["ds_config"]})[1]["ds_config"]
    for i, token in enumerate(argv):
        if skip:
            skip = False
            continue
        flag = token.split("=", 1)[0]
        if flag in names or flag[2:] in resolved:
            skip = "=" not in token and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            continue
        out.append(token)
    for name, value in resolved.items():
        out += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return " ".join(["bigrerank", "train", *out])


def plan_json(plan: Plan, suggestion: str | None = None, max_group: int | None = None,
              time: dict | None = None) -> dict:
    verdict = {"per_rank": plan.per_rank, "per_node": plan.per_node, "budget": plan.budget, "fits": plan.fits,
               "margin": plan.margin}
    if max_group is None:
        return verdict
    return {**verdict, "suggestion": suggestion, "max_group_size": max_group, "time": time}


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def render_time(time: dict | None) -> str:
    if time is None:
        return "time: not estimated (the run's GPU is not here to measure)"
    total = (f", {_duration(time['total_seconds'])} for the run" if time["total_seconds"] is not None
             else " (give --max_steps or a --train_path file for the run's total)")
    return (f"time: ~{time['step_seconds']:.1f} s a step, {time['tokens_per_second']:.0f} tokens/s{total} "
            f"(a matmul measured here at {time['matmul_gflops']:.0f} GFLOP/s, {MFU:.0%} of it; pairs at --max_len)")


def render(plan: Plan, hardware: Hardware, suggestion: str | None, max_group: int) -> str:
    """Two tables (per rank, per node) and the verdict, as text."""
    def table(title, rows, budget):
        width = max(len(k) for k in rows)
        lines = [title] + [f"  {k:<{width}}  {format_size(v):>12}" for k, v in rows.items() if k != "total"]
        lines.append(f"  {'total':<{width}}  {format_size(rows['total']):>12}"
                     + (f"   of {format_size(budget)}" if budget else ""))
        return "\n".join(lines)

    rank_title = ("per rank (GPU)" if hardware.gpus_per_node else "per rank (process; host memory)")
    parts = [table(rank_title, plan.per_rank, plan.budget["per_rank"]),
             table(f"per node (host, {hardware.ranks_per_node} ranks)", plan.per_node, plan.budget["per_node"])]
    word = "fits" if plan.fits else "does NOT fit"
    parts.append(f"verdict: {word}, margin {format_size(plan.margin)}")
    if not plan.fits:
        parts.append(f"cheapest change that fits: {suggestion}" if suggestion
                     else "no change tried (gradient cache, checkpointing, ZeRO stage, offload, LoRA) fits")
    parts.append(f"largest --train_group_size that fits as given: {max_group}")
    return "\n".join(parts)


def training_hardware() -> Hardware:
    """This run's hardware, from the launcher's environment and the machine (before any process group)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    nodes = max(1, world // max(local, 1))
    if torch.cuda.is_available():
        return Hardware(nodes, local, 1, torch.cuda.get_device_properties(0).total_memory, machine_memory())
    return Hardware(nodes, 0, local, None, machine_memory())


def check_training(model_args, data_args, args, raw_ds_config: dict, model_config) -> None:
    """Rank 0 logs the plan in one line; a plan that does not fit stops the run (unless --ignore_memory_plan)."""
    hardware = training_hardware()
    planner = Planner(model_args, data_args, args, hardware, raw_ds_config, copy.deepcopy(model_config))
    plan = planner.plan()
    if int(os.environ.get("RANK", "0")) == 0:
        log.info("memory plan: %s", json.dumps(plan_json(plan)))
    if plan.fits or getattr(args, "ignore_memory_plan", False):
        return
    _, change, max_group = planner.verdict()
    argv = ["--model_name_or_path", model_args.model_name_or_path, "--ds_config", args.ds_config]
    suggestion = suggested_command(argv, change, planner) + " ..." if change else None
    raise InputError("memory plan", "the predicted peak exceeds this machine's memory; pass "
                     "--ignore_memory_plan to run anyway. " + render(plan, hardware, suggestion, max_group)
                     .replace("\n", "; "))
