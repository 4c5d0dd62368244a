"""The `bigrerank` console script: one subcommand per pipeline stage, each a module with `main(argv)`."""
from __future__ import annotations

import importlib
import sys

from . import __version__
from .errors import InputError, UsageError

COMMANDS = {
    "retrieve": ("bigrerank.retrieval", "BM25 first stage: corpus + queries -> TREC run"),
    "prepare": ("bigrerank.data.prepare", "build grouped training data or rerank input from a run"),
    "train": ("bigrerank.training.trainer", "train a reranker on a DeepSpeed engine"),
    "plan": ("bigrerank.planning.command", "memory per GPU and per node of a training command, before launch"),
    "consolidate": ("bigrerank.checkpoints.consolidate", "DeepSpeed checkpoint -> Hugging Face directory"),
    "rerank": ("bigrerank.inference.rerank", "score candidate pairs -> qid<TAB>pid<TAB>score"),
    "convert": ("bigrerank.evaluation.convert", "score file -> MS MARCO or TREC run"),
    "eval": ("bigrerank.evaluation.evaluate", "IR metrics of a run against qrels"),
    "fuse": ("bigrerank.evaluation.fuse", "fuse runs (e.g. BM25 + reranker) with ranx -> TREC run"),
    "hostfile": ("bigrerank.slurm", "write a DeepSpeed hostfile from a slurm allocation"),
    "demo": ("bigrerank.demo", "the end-to-end job on the bundled default data"),
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
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return module.main(rest) or 0
    except (InputError, UsageError) as e:
        print(f"bigrerank {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
