"""IR metrics of a run against relevance judgments, with ir_measures (`bigrerank eval`, evaluation while training).

Conventions (trec_eval's `-c`):
- the mean is over every query in the qrels; a judged query without run rows scores 0 on every metric;
- run queries without judgments are ignored (and counted in the report);
- documents are ranked as `read_run` ranks them: by score (never by a TREC run's rank column), equal scores by
  document id (the order `bigrerank convert` writes), so a score file and its converted run evaluate the same;
- RR, AP, R and P count grade >= 1 as relevant (ir_measures' default `rel=1`); nDCG uses the grades as gains.
"""
from __future__ import annotations

from dataclasses import dataclass

import ir_measures

DEFAULT_METRICS = ("RR@10", "nDCG@10", "R@100", "AP")
MAX_CUTOFF = 2**31 - 1  # trec_eval's cut-offs are C ints

Run = dict[str, list[tuple[str, float]]] | dict[str, dict[str, float]]


def parse_metrics(names) -> list:
    """ir_measures measures from names such as "nDCG@10", "RR(rel=2)@10" or "MRR@10"; ValueError if unknown."""
    measures = []
    for name in names:
        try:
            measure = ir_measures.parse_measure(name)
        except (NameError, ValueError) as e:
            raise ValueError(f"unknown metric '{name}': {e}") from None
        cutoff = measure.params.get("cutoff")
        if cutoff is not None and not 1 <= cutoff <= MAX_CUTOFF:  # trec_eval aborts the process on a cut-off of 0
            raise ValueError(f"metric '{name}': the cut-off after @ must be between 1 and {MAX_CUTOFF}")
        measures.append(measure)
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
