"""`bigrerank eval` and `evaluate()`: IR metrics of a run against relevance judgments, with ir_measures.

Conventions (trec_eval's `-c`):
- the mean is over every query in the qrels; a judged query without run rows scores 0 on every metric;
- run queries without judgments are ignored (and counted in the report);
- documents are ranked as `read_run` ranks them: by score (never by a TREC run's rank column), equal scores by
  document id (the order `bigrerank convert` writes), so a score file and its converted run evaluate the same;
- RR, AP, R and P count grade >= 1 as relevant (ir_measures' default `rel=1`); nDCG uses the grades as gains.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import ir_measures

from ..atomic import atomic_file
from ..command_line import CommandParser
from ..data.collection import RUN_FORMATS, read_qrels, read_run_announced
from ..errors import InputError
from ..outputs import check_output
from .compare import TESTS, compare, format_comparison

DEFAULT_METRICS = ("RR@10", "nDCG@10", "R@100", "AP")

Run = dict[str, list[tuple[str, float]]] | dict[str, dict[str, float]]


def parse_metrics(names) -> list:
    """ir_measures measures from names such as "nDCG@10", "RR(rel=2)@10" or "MRR@10"; ValueError if unknown."""
    measures = []
    for name in names:
        try:
            measures.append(ir_measures.parse_measure(name))
        except (NameError, ValueError) as e:
            raise ValueError(f"unknown metric '{name}': {e}") from None
    if not measures:
        raise ValueError("no metrics")
    return measures


def _ranked(docs) -> list[str]:
    """Document ids best first: a list (pid, score) is taken as ranked, a {pid: score} dict is sorted."""
    if isinstance(docs, dict):
        return [pid for pid, _ in sorted(docs.items(), key=lambda item: (-item[1], item[0]))]
    return [pid for pid, _ in docs]


def rank_scores(run: Run, queries) -> dict[str, dict[str, float]]:
    """The run restricted to `queries`, its scores replaced by strictly decreasing ones that keep its order."""
    result = {}
    for qid in queries:
        if qid in run:
            ranked = _ranked(run[qid])
            result[qid] = {pid: float(len(ranked) - position) for position, pid in enumerate(ranked)}
    return result


def per_query(qrels: dict[str, dict[str, int]], run: Run, metrics=DEFAULT_METRICS) -> dict[str, dict[str, float]]:
    """{metric name: {qid: value}} for every query in the qrels (0 where the run has no rows for it)."""
    measures = parse_metrics(metrics)
    values = {str(m): dict.fromkeys(qrels, 0.0) for m in measures}
    scored = rank_scores(run, qrels)
    if scored:
        for metric in ir_measures.iter_calc(measures, qrels, scored):
            values[str(metric.measure)][metric.query_id] = float(metric.value)
    return values


def evaluate(qrels: dict[str, dict[str, int]], run: Run, metrics=DEFAULT_METRICS) -> dict[str, float]:
    """Mean of each metric over the judged queries, keyed by ir_measures' name ("RR@10", "nDCG@10", ...)."""
    return {name: sum(by_query.values()) / len(by_query) for name, by_query in per_query(qrels, run, metrics).items()}


@dataclass(frozen=True)
class Coverage:
    judged: int       # queries in the qrels: the denominator of every mean
    missing: int      # judged queries without run rows (scored 0)
    unjudged: int     # run queries without judgments (ignored)

    def describe(self) -> str:
        return (f"{self.judged} judged queries ({self.missing} without run rows, scored 0); "
                f"{self.unjudged} run queries without judgments ignored")


def coverage(qrels: dict, run: dict) -> Coverage:
    return Coverage(len(qrels), len(qrels.keys() - run.keys()), len(run.keys() - qrels.keys()))


def format_table(results: dict[str, float]) -> str:
    width = max(len("metric"), *map(len, results))
    rows = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    rows += [f"{name:<{width}}  {value:.4f}" for name, value in results.items()]
    return "\n".join(rows)


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


def write_json(path, data) -> None:
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def compare_runs(args: EvalArguments) -> int:
    """`--compare A B`: both runs' metrics, the difference B - A and a paired test over the judged queries."""
    if args.run is not None:
        raise InputError("--run", "give --run or --compare, not both")
    if len(args.compare) != 2:
        raise InputError("--compare", f"takes two runs, got {len(args.compare)}")
    if not 0 < args.max_p < 1:
        raise InputError("--max_p", f"must lie between 0 and 1, got {args.max_p}")
    if args.output is not None:
        check_output(args.output, [args.qrels, *args.compare])
    for path in args.compare:  # every input found before any is read (and its format announced)
        if not Path(path).is_file():
            raise InputError(path, "no such file")
    qrels = read_qrels(args.qrels)
    runs = [read_run_announced(path, args.run_format) for path in args.compare]
    results = compare(*(per_query(qrels, run, args.metrics) for run in runs), test=args.test, max_p=args.max_p)
    print(format_comparison(results, *args.compare, args.test, args.max_p))
    for path, run in zip(args.compare, runs):
        print(f"{path}: {coverage(qrels, run).describe()}", file=sys.stderr)
    if args.output is not None:
        write_json(args.output, {"a": args.compare[0], "b": args.compare[1], "test": args.test, "max_p": args.max_p,
                                 "metrics": {r.metric: r.as_json() for r in results}})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(EvalArguments, "eval")
    (args,) = parser.parse(argv)
    try:
        parse_metrics(args.metrics)
    except ValueError as e:
        parser.error(str(e))
    if args.compare is not None:
        return compare_runs(args)
    if args.run is None:
        raise InputError("--run", "required (or --compare RUN_A RUN_B)")
    if args.output is not None:
        check_output(args.output, [args.qrels, args.run])
    qrels, run = read_qrels(args.qrels), read_run_announced(args.run, args.run_format)
    results = evaluate(qrels, run, args.metrics)
    print(format_table(results))
    print(coverage(qrels, run).describe(), file=sys.stderr)
    if args.output is not None:
        write_json(args.output, results)
    return 0
