"""`bigrerank hostfile`: the DeepSpeed hostfile of the current slurm allocation, one `host slots=N` line per node."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Literal

from ..atomic import atomic_file
from ..slurm import hostfile_slots, hostfile_text
from .outputs import check_output
from .parser import CommandParser


@dataclass
class HostfileArguments:
    output: str | None = field(default=None, metadata={"help": "hostfile to write (atomically); stdout when absent"})
    slots_from: Literal["auto", "gpus", "tasks"] = field(
        default="auto", metadata={"help": "slots per host: GPUs on the node, slurm tasks per node, or auto"})


def main(argv: list[str] | None = None) -> int:
    (args,) = CommandParser(HostfileArguments, "hostfile").parse(argv)
    if args.output is not None:
        check_output(args.output)
    text = hostfile_text(hostfile_slots(os.environ, args.slots_from))
    if args.output is None:
        sys.stdout.write(text)
        return 0
    with atomic_file(args.output) as f:
        f.write(text)
    print(f"wrote {args.output}: {text.count(chr(10))} hosts", file=sys.stderr)
    return 0
