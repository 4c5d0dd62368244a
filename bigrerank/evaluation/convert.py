"""`bigrerank convert`: a `qid<TAB>pid<TAB>score` file -> an MS MARCO (`qid<TAB>pid<TAB>rank`) or TREC run.

Ranks follow descending score; equal scores are ordered by document id, so the output is deterministic.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ..atomic import atomic_file
from ..data.collection import read_run
from ..data.runs import FORMATS, run_lines


@dataclass
class ConvertArguments:
    scores: str = field(metadata={"help": "score file qid<TAB>pid<TAB>score (e.g. `bigrerank rerank` output); "
                                          "may also be given as the first positional argument"})
    to: str = field(metadata={"help": "output format", "choices": FORMATS})
    output: str = field(metadata={"help": "run file to write"})
    run_name: str = field(default="bigrerank", metadata={"help": "TREC run tag (last column)"})


def parse_arguments(argv: list[str] | None) -> ConvertArguments:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--scores", *argv]
    parser = HfArgumentParser(ConvertArguments)
    parser.prog = "bigrerank convert"
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    if not args.run_name or len(args.run_name.split()) != 1 or args.run_name != args.run_name.strip():
        parser.error(f"--run_name must be one word without whitespace, got {args.run_name!r}")
    return args


def convert(scores_path, fmt: str, output_path, run_name: str = "bigrerank") -> int:
    """Write the run; returns the number of rows."""
    run = read_run(scores_path, "scores")
    with atomic_file(output_path, "w", encoding="utf-8") as f:
        f.writelines(run_lines(run, fmt, run_name))
    return sum(map(len, run.values()))


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    rows = convert(args.scores, args.to, args.output, args.run_name)
    print(f"bigrerank convert: {rows} rows -> {args.output} ({args.to})", file=sys.stderr)
    return 0
