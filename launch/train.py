"""Training entry point for every launcher: `deepspeed`, `torchrun`, slurm's `srun`, or plain `python`."""
import sys

from bigrerank.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
