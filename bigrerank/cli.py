"""The `bigrerank` console script: one subcommand per pipeline stage, each a module of `bigrerank.commands`."""
from __future__ import annotations

import importlib
import sys

from . import __version__
from .errors import InputError, UsageError

COMMANDS = {
    "retrieve": ("retrieve", "BM25 first stage: corpus + queries -> TREC run"),
    "prepare": ("prepare", "build grouped training data or rerank input from a run"),
    "train": ("train", "train a reranker on a DeepSpeed engine"),
    "plan": ("plan", "memory per GPU and per node of a training command, before launch"),
    "consolidate": ("consolidate", "DeepSpeed checkpoint -> Hugging Face directory"),
    "rerank": ("rerank", "score candidate pairs -> qid<TAB>pid<TAB>score"),
    "convert": ("convert", "score file -> MS MARCO or TREC run"),
    "eval": ("evaluate", "IR metrics of a run against qrels"),
    "fuse": ("fuse", "fuse runs (e.g. BM25 + reranker) with ranx -> TREC run"),
    "hostfile": ("hostfile", "write a DeepSpeed hostfile from a slurm allocation"),
    "demo": ("demo", "the end-to-end job on the bundled default data"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items())
    return (f"usage: bigrerank <command> [options]   (bigrerank <command> --help: its options; bigrerank --version)"
            f"\n\ncommands:\n{rows}\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"bigrerank {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bigrerank: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    command = importlib.import_module(f"bigrerank.commands.{COMMANDS[name][0]}")
    try:
        return command.main(rest) or 0
    except (InputError, UsageError) as e:
        print(f"bigrerank {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
