"""Training entry point for every launcher: `deepspeed`, `torchrun`, slurm's `srun`, or plain `python`
(the same as `python -m bigrerank.launch`)."""
import sys

from bigrerank.launch import run

if __name__ == "__main__":
    run(sys.argv[1:])
