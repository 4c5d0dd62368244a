"""Training entry point for every launcher: `deepspeed`, `torchrun`, slurm's `srun`, or plain `python`."""
import os
import sys

from bigrerank.cli import main

if __name__ == "__main__":
    code = main(["train", *sys.argv[1:]])
    # The process group is already torn down and every output written: leave without interpreter-exit
    # destructors, which rarely abort a finished rank (seen with DeepSpeed's CPU communication op).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
