"""Training entry for every launcher: `python -m bigrerank.launch ARGS`, `deepspeed --module bigrerank.launch ARGS`,
`torchrun -m bigrerank.launch ARGS`, slurm's `srun python -m bigrerank.launch ARGS`; ARGS are `bigrerank train`'s."""
from __future__ import annotations

import os
import sys

from .cli import main


def run(argv: list[str]):
    """`bigrerank train ARGV`, then leave the process with its exit code."""
    code = main(["train", *argv])
    # The process group is already torn down and every output written: leave without interpreter-exit
    # destructors, which rarely abort a finished rank (seen with DeepSpeed's CPU communication op).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run(sys.argv[1:])
