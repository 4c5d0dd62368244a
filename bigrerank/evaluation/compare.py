"""Is run B better than run A? Paired tests over the judged queries' per-query metric values.

- `student`: the two-sided paired Student's t-test (ranx's `paired_student_t_test`);
- `bootstrap`: a paired bootstrap of the mean per-query difference (scipy's `bootstrap`, seeded): the p-value
  is twice the smaller share of resampled means on either side of 0 (at most 1).

Either way the 95% percentile-bootstrap interval of the mean difference is given too.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError

TESTS = {"student": "two-sided paired t-test", "bootstrap": "paired bootstrap of the mean difference"}
RESAMPLES = 10_000
MIN_QUERIES = 2  # a paired test needs two differences at least


def check_comparable(qrels: dict, qrels_path, runs: list[dict], paths: list[str]) -> None:
    """InputError unless both runs rank the same judged queries, and there are enough judged queries to test."""
    if len(qrels) < MIN_QUERIES:
        raise InputError(qrels_path, f"{len(qrels)} judged query: a paired test needs at least {MIN_QUERIES}")
    judged = [qrels.keys() & run.keys() for run in runs]
    for this, other in ((0, 1), (1, 0)):
        missing = judged[other] - judged[this]
        if missing:
            raise InputError(paths[this], f"ranks no documents for judged query '{min(missing)}' of {paths[other]} "
                                          f"({len(missing)} such queries): compared runs must rank the same judged "
                                          "queries")
    if not judged[0]:
        raise InputError(qrels_path, f"no judged query is ranked by {paths[0]} or {paths[1]}: nothing to compare")


@dataclass(frozen=True)
class Difference:
    metric: str
    a: float                 # mean over the judged queries, run A
    b: float                 # the same for run B
    low: float               # 95% bootstrap interval of mean(B - A)
    high: float
    p_value: float
    significant: bool        # p_value <= max_p

    @property
    def delta(self) -> float:
        return self.b - self.a

    def as_json(self) -> dict:
        return {**asdict(self), "difference": self.delta}


def _bootstrap(differences: np.ndarray, seed: int) -> tuple[float, float, float]:
    """(low, high) of the 95% percentile interval of the mean difference, and the two-sided bootstrap p-value."""
    from scipy.stats import bootstrap

    result = bootstrap((differences,), np.mean, n_resamples=RESAMPLES, method="percentile",
                       rng=np.random.default_rng(seed))
    means = result.bootstrap_distribution
    p_value = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return float(result.confidence_interval.low), float(result.confidence_interval.high), p_value


def _student(a: np.ndarray, b: np.ndarray) -> float:
    from ranx.statistical_tests import paired_student_t_test

    if np.array_equal(a, b):
        return 1.0  # no difference at all (the t statistic is 0/0)
    p_value, _ = paired_student_t_test(a, b)
    return float(p_value)


def compare(values_a: dict[str, dict[str, float]], values_b: dict[str, dict[str, float]], test: str = "student",
            max_p: float = 0.05, seed: int = 0) -> list[Difference]:
    """One `Difference` per metric from {metric: {qid: value}} of runs A and B over the same queries."""
    if test not in TESTS:
        raise ValueError(f"test must be one of {sorted(TESTS)}, got '{test}'")
    results = []
    for metric, by_query in values_a.items():
        queries = sorted(by_query)
        a = np.array([by_query[q] for q in queries], dtype=float)
        b = np.array([values_b[metric][q] for q in queries], dtype=float)
        low, high, boot_p = _bootstrap(b - a, seed)
        p_value = _student(a, b) if test == "student" else boot_p
        results.append(Difference(metric, float(a.mean()), float(b.mean()), low, high, p_value, p_value <= max_p))
    return results


def format_comparison(results: list[Difference], name_a: str, name_b: str, test: str, max_p: float) -> str:
    width = max(len("metric"), *(len(r.metric) for r in results))
    rows = [f"A = {name_a}", f"B = {name_b}",
            f"{'metric':<{width}}  {'A':>7}  {'B':>7}  {'B - A':>8}  {'95% CI of B - A':>19}  {'p':>7}  significant",
            f"{'-' * width}  -------  -------  --------  -------------------  -------  -----------"]
    for r in results:
        interval = f"[{r.low:+.4f}, {r.high:+.4f}]"
        rows.append(f"{r.metric:<{width}}  {r.a:7.4f}  {r.b:7.4f}  {r.delta:+8.4f}  {interval:>19}  {r.p_value:7.4f}  "
                    f"{'yes' if r.significant else 'no'}")
    rows.append(f"p: {TESTS[test]} over the judged queries; significant: p <= {max_p}; "
                f"CI: percentile bootstrap, {RESAMPLES} resamples")
    return "\n".join(rows)
