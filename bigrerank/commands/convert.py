"""`bigrerank convert`: a `qid<TAB>pid<TAB>score` file (or any run) -> an MS MARCO (`qid<TAB>pid<TAB>rank`) or TREC run.

The input is read as `bigrerank eval` reads it (`read_run`: one reader, the same format detection): ranks follow
descending score, equal scores are ordered by document id, so the output is deterministic.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ..atomic import atomic_file
from ..data.collection import RUN_FORMATS, read_run_announced
from ..data.runs import FORMATS, run_lines
from .outputs import check_output
from .parser import CommandParser, one_word


@dataclass
class ConvertArguments:
    scores: str = field(metadata={"help": "score file qid<TAB>pid<TAB>score (e.g. `bigrerank rerank` output); "
                                          "may also be given as the first positional argument"})
    to: str = field(metadata={"help": "output format", "choices": FORMATS})
    output: str = field(metadata={"help": "run file to write"})
    run_name: str = field(default="bigrerank", metadata={"help": "TREC run tag (last column)"})
    run_format: str = field(default="auto", metadata={
        "help": "format of the input (auto: detected, and said; an ambiguous file needs it)", "choices": RUN_FORMATS})

    def __post_init__(self):
        one_word(self, "run_name")


def parse_arguments(argv: list[str] | None) -> ConvertArguments:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--scores", *argv]
    (args,) = CommandParser(ConvertArguments, "convert").parse(argv)
    return args


def convert(scores_path, fmt: str, output_path, run_name: str = "bigrerank", run_format: str = "auto") -> int:
    """Write the run; returns the number of rows."""
    check_output(output_path, [scores_path])
    run = read_run_announced(scores_path, run_format)
    with atomic_file(output_path, "w", encoding="utf-8") as f:
        f.writelines(run_lines(run, fmt, run_name))
    return sum(map(len, run.values()))


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    rows = convert(args.scores, args.to, args.output, args.run_name, args.run_format)
    print(f"bigrerank convert: {rows} rows -> {args.output} ({args.to})", file=sys.stderr)
    return 0
