"""Entry point for launchers: `torchrun --nproc_per_node N launch/rerank.py ARGS` or `deepspeed launch/rerank.py ARGS`.

Takes the same arguments as `bigrerank rerank`; every rank scores a shard and rank 0 writes the score file.
"""
import sys

from bigrerank.cli import main

if __name__ == "__main__":
    sys.exit(main(["rerank", *sys.argv[1:]]))
