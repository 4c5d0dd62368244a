"""`bigrerank plan`: a training command line's memory per rank and per node, a verdict and the cheapest fix.

    bigrerank plan --model DIR_OR_CONFIG_JSON --ds_config ds_configs/zero3.json --nodes 2 --gpus_per_node 8 \\
        --gpu_memory 80GiB --host_memory 1TiB --train_group_size 64 --grad_cache_chunk_size 8 ... [--json]

It reads the training flags (`train`'s dataclasses; --train_path and --output_dir may be left out) plus the
hardware ones below.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import ds_config, heads, lora
from ..contract import default_head_and_template
from ..gguf_file import is_gguf
from ..errors import InputError, UsageError
from ..model import load_config
from ..planning.estimate import Hardware
from ..planning.planner import Planner, machine_memory, plan_json, render, render_time, suggested_command
from ..planning.sizes import parse_size
from ..training.trainer import pair_encoding
from .parser import CommandParser
from .train import DataArguments, ModelArguments, TrainingArguments

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass
class PlanArguments:
    nodes: int = field(default=1, metadata={"help": "Nodes of the run."})
    gpus_per_node: Optional[int] = field(default=None, metadata={
        "help": "GPUs (ranks) per node; 0 = CPU-only, everything in host memory (default: this machine's)."})
    cpu_processes_per_node: int = field(default=1, metadata={"help": "Ranks per node of a CPU-only run."})
    gpu_memory: Optional[str] = field(default=None, metadata={"help": "Memory of one GPU, e.g. 80GiB "
                                                              "(default: this machine's GPU)."})
    host_memory: Optional[str] = field(default=None, metadata={"help": "Memory of one node, e.g. 1TiB "
                                                               "(default: this machine's)."})
    json: bool = field(default=False, metadata={"help": "Print the plan as one JSON object."})

    def __post_init__(self):
        if self.nodes < 1 or self.cpu_processes_per_node < 1:
            raise UsageError("--nodes/--cpu_processes_per_node: must be >= 1")
        if self.gpus_per_node is not None and self.gpus_per_node < 0:
            raise UsageError(f"--gpus_per_node: must be >= 0, got {self.gpus_per_node}")
        for name in ("gpu_memory", "host_memory"):
            if getattr(self, name) is not None:
                try:
                    parse_size(getattr(self, name), f"--{name}")
                except InputError as e:
                    raise UsageError(str(e)) from None


@dataclass
class PlannedData(DataArguments):
    train_path: str = field(default="", metadata={"help": "Not read: a plan needs no data."})


@dataclass
class PlannedTraining(TrainingArguments):
    output_dir: str = field(default="", metadata={"help": "Not written: a plan writes nothing."})


def parse(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments, PlanArguments]:
    """The training dataclasses and PlanArguments from one argument list; --train_path/--output_dir optional."""
    model_args, data_args, args, plan_args = CommandParser(
        (ModelArguments, PlannedData, PlannedTraining, PlanArguments), "plan", description=__doc__).parse(argv)
    as_trained = (DataArguments(**dataclasses.asdict(data_args)), TrainingArguments(**dataclasses.asdict(args)))
    return model_args, *as_trained, plan_args


def hardware_from(plan_args: PlanArguments) -> Hardware:
    import torch

    gpus = torch.cuda.device_count() if plan_args.gpus_per_node is None else plan_args.gpus_per_node
    gpu_memory = None
    if gpus:
        if plan_args.gpu_memory is not None:
            gpu_memory = parse_size(plan_args.gpu_memory, "--gpu_memory")
        elif torch.cuda.is_available():
            gpu_memory = torch.cuda.get_device_properties(0).total_memory
        else:
            raise InputError("--gpu_memory", "needed with --gpus_per_node > 0 when no GPU is visible here")
    host = parse_size(plan_args.host_memory, "--host_memory") if plan_args.host_memory else machine_memory()
    return Hardware(plan_args.nodes, gpus, plan_args.cpu_processes_per_node, gpu_memory, host)


def check_model_flags(model_args, data_args) -> None:
    """The model flags training checks before it starts: the LoRA targets, and --max_len leaving the template room
    for a pair (not for a bare config.json or a directory without a tokenizer: no template to count)."""
    source = Path(model_args.model_name_or_path)
    config = load_config(source)
    tokenizer_given = (model_args.tokenizer_name or is_gguf(source)
                       or any((source / name).is_file() for name in TOKENIZER_FILES))
    if (source.is_dir() or is_gguf(source)) and tokenizer_given:
        head = pair_encoding(model_args, data_args, config)[1].head
    else:
        head = heads.get(model_args.score_head or default_head_and_template(config, tokenizer=None)[0])
    lora.check_targets(model_args, config, head)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    model_args, data_args, args, plan_args = parse(argv)
    hardware = hardware_from(plan_args)
    check_model_flags(model_args, data_args)
    # DeepSpeed logs to stdout (its accelerator notice on import): with --json, stdout carries the JSON alone
    with contextlib.redirect_stdout(sys.stderr if plan_args.json else sys.stdout):
        planner = Planner(model_args, data_args, args, hardware, ds_config.load(args.ds_config))
        plan, change, max_group = planner.verdict()
        time = planner.time()
    hardware_flags = [f.name for f in dataclasses.fields(PlanArguments)]
    suggestion = suggested_command(argv, change, planner, drop=hardware_flags) if change is not None else None
    if plan_args.json:
        print(json.dumps(plan_json(plan, suggestion, max_group, time)))
    else:
        print(render(plan, hardware, suggestion, max_group))
        print(render_time(time))
    return 0
