"""`bigrerank eval`: IR metrics of a run against qrels, or two runs compared with a paired test (`--compare`)."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_file
from ..data.collection import RUN_FORMATS, read_qrels, read_run, read_run_announced, run_format_note
from ..errors import InputError, UsageError
from ..evaluation.compare import TESTS, check_comparable, compare, format_comparison
from ..evaluation.metrics import DEFAULT_METRICS, coverage, evaluate, format_table, parse_metrics, per_query
from .outputs import check_output
from .parser import CommandParser


@dataclass
class EvalArguments:
    qrels: str = field(metadata={"help": "relevance judgments: TREC (qid 0 docid grade) or BEIR tsv with header"})
    run: str | None = field(default=None, metadata={
        "help": "run: TREC, MS MARCO (qid pid rank) or score file (qid pid score)"})
    output: str | None = field(default=None, metadata={"help": "also write the metrics as JSON {name: value}"})
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS), metadata={
        "help": "ir_measures names, e.g. RR@10 nDCG@10 R@100 AP P@5 'nDCG(judged_only=True)@10'"})
    run_format: str = field(default="auto", metadata={
        "help": "run file format (auto: detected, and said; an ambiguous file needs it)", "choices": RUN_FORMATS})
    compare: list[str] | None = field(default=None, metadata={
        "help": "instead of --run: two runs A B; prints each metric for both, B - A and whether the difference is "
                "significant (paired over the judged queries)"})
    test: str = field(default="student", metadata={"help": "--compare's paired test: student (t-test) or bootstrap",
                                                   "choices": tuple(TESTS)})
    max_p: float = field(default=0.05, metadata={"help": "--compare: significant when p <= max_p"})

    def __post_init__(self):
        try:
            parse_metrics(self.metrics)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if self.compare is None:
            if self.run is None:
                raise UsageError("--run: required (or --compare RUN_A RUN_B)")
            return
        if self.run is not None:
            raise UsageError("--run: give --run or --compare, not both")
        if len(self.compare) != 2:
            raise UsageError(f"--compare: takes two runs, got {len(self.compare)}")
        if not 0 < self.max_p < 1:
            raise UsageError(f"--max_p: must lie between 0 and 1, got {self.max_p}")


def write_json(path, data) -> None:
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def compare_runs(args: EvalArguments) -> int:
    """`--compare A B`: both runs' metrics, the difference B - A and a paired test over the judged queries."""
    if args.output is not None:
        check_output(args.output, [args.qrels, *args.compare])
    for path in args.compare:  # every input found before any is read (and its format announced)
        if not Path(path).is_file():
            raise InputError(path, "no such file")
    qrels = read_qrels(args.qrels)
    formats, notes = zip(*(run_format_note(path, args.run_format) for path in args.compare))
    runs = [read_run(path, fmt) for path, fmt in zip(args.compare, formats)]
    check_comparable(qrels, args.qrels, runs, args.compare)
    print("\n".join(notes), file=sys.stderr)  # the formats, said once both runs are found comparable
    results = compare(*(per_query(qrels, run, args.metrics) for run in runs), test=args.test, max_p=args.max_p)
    print(format_comparison(results, *args.compare, args.test, args.max_p))
    for path, run in zip(args.compare, runs):
        print(f"{path}: {coverage(qrels, run).describe()}", file=sys.stderr)
    if args.output is not None:
        write_json(args.output, {"a": args.compare[0], "b": args.compare[1], "test": args.test, "max_p": args.max_p,
                                 "metrics": {r.metric: r.as_json() for r in results}})
    return 0


def main(argv: list[str] | None = None) -> int:
    (args,) = CommandParser(EvalArguments, "eval").parse(argv)
    if args.compare is not None:
        return compare_runs(args)
    if args.output is not None:
        check_output(args.output, [args.qrels, args.run])
    qrels, run = read_qrels(args.qrels), read_run_announced(args.run, args.run_format)
    results = evaluate(qrels, run, args.metrics)
    print(format_table(results))
    print(coverage(qrels, run).describe(), file=sys.stderr)
    if args.output is not None:
        write_json(args.output, results)
    return 0
