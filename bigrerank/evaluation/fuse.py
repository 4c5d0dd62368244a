"""Fusion of runs (e.g. BM25's and a reranker's) into one with ranx's methods, and its parameter file.

Fusion and weight optimisation are ranx's (`ranx.fuse`, `ranx.optimize_fusion`); this module reads and checks
the runs, keeps the learned parameters in a JSON file beside the output (method, normalisation, parameters and
the run names they were learned for), and applies such a file unchanged to another split's runs.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_file
from ..data.collection import Run, read_qrels, read_run
from ..errors import InputError


# ranx method names, by the hyperparameters they take
WEIGHTED = ("wsum", "wmnz", "mixed", "w_bordafuse", "w_condorcet")          # one weight per run
SCALAR = {"rrf": ("k", 60), "logn_isr": ("sigma", 0.01), "rbc": ("phi", None), "gmnz": ("gamma", None)}
PLAIN = ("sum", "mnz", "anz", "max", "min", "med", "isr", "log_isr", "bordafuse", "condorcet")
METHODS = (*WEIGHTED, *SCALAR, *PLAIN)
NORMS = ("min-max", "max", "sum", "zmuv", "rank", "borda", "none")


@dataclass(frozen=True)
class Fusion:
    method: str
    norm: str
    params: dict

    def ranx_norm(self) -> str | None:
        return None if self.norm == "none" else self.norm


def params_path(output) -> Path:
    """`fused.trec` -> `fused.fusion.json`: where learned parameters are saved."""
    return Path(output).with_suffix(".fusion.json")


def check_metric(metric: str) -> None:
    """ValueError unless `metric` is a ranx metric name, optionally with a positive cut-off (`ndcg@10`)."""
    from ranx.metrics import metric_switch

    name, _, cutoff = metric.partition("@")
    metric_switch(name)
    if cutoff and not (cutoff.isdigit() and int(cutoff) > 0):
        raise ValueError(f"the cut-off of '{metric}' must be a positive integer")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def params_problem(method: str, params: dict, runs: int) -> str | None:
    """Why `params` do not fit `method` and the number of runs, or None."""
    if method in WEIGHTED:
        weights = params.get("weights")
        if not isinstance(weights, list) or not all(map(_is_number, weights)):
            return f"--method {method} needs a list of weights"
        if len(weights) != runs:
            return f"--method {method} needs one weight per run: {runs} runs, {len(weights)} weights"
        if not all(math.isfinite(w) and w >= 0 for w in weights):
            return f"--method {method}: each weight must be a finite number of at least 0, got {weights}"
        if not any(weights):
            return f"--method {method}: weights that are all 0 give every document the same score"
    elif method in SCALAR:
        name = SCALAR[method][0]
        value = params.get(name)
        if not _is_number(value):
            return f"--method {method} takes one value ({name})"
        if not math.isfinite(value):
            return f"--method {method}: {name} must be finite, got {value}"
        if name == "k" and not (float(value).is_integer() and value >= 1):
            return f"rrf's k must be a positive integer, got {value}"
    elif params:
        return f"--method {method} takes no parameters"
    return None


def read_fusion_file(path, runs: int) -> tuple[Fusion, list[str]]:
    """The fusion a --optimize_on run saved, checked against the number of runs, and the run names it names."""
    if not Path(path).is_file():
        raise InputError(path, "no such file (--weights takes a JSON file written by --optimize_on, or numbers)")
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not a JSON fusion file ({e})") from None
    if not isinstance(saved, dict):
        raise InputError(path, "expected a JSON object")
    for key in ("method", "norm", "params", "runs"):
        if key not in saved:
            raise InputError(path, "missing", field=key)
    if saved["method"] not in METHODS:
        raise InputError(path, f"unknown method {saved['method']!r}", field="method")
    if saved["norm"] not in NORMS:
        raise InputError(path, f"unknown normalisation {saved['norm']!r}", field="norm")
    names = saved["runs"]
    if not isinstance(names, list) or len(names) != runs:
        raise InputError(path, f"learned for {len(names) if isinstance(names, list) else '?'} runs, "
                               f"--runs gives {runs}", field="runs")
    params = saved["params"]
    if not isinstance(params, dict):
        raise InputError(path, "expected an object", field="params")
    problem = params_problem(saved["method"], params, runs)
    if problem:
        raise InputError(path, problem, field="params")
    return Fusion(saved["method"], saved["norm"], params), names


def read_runs(paths: list[str]) -> list[Run]:
    """The runs, which must rank the same queries (ranx fuses query by query)."""
    runs = [read_run(p) for p in paths]
    for path, run in zip(paths[1:], runs[1:]):
        for missing, holder, lacking in ((runs[0].keys() - run.keys(), paths[0], path),
                                         (run.keys() - runs[0].keys(), path, paths[0])):
            if missing:
                raise InputError(lacking, f"ranks no documents for query '{min(missing)}' of {holder} "
                                          f"({len(missing)} such queries): fused runs must cover the same queries")
    return runs


@contextlib.contextmanager
def quiet_numba():
    """ranx's compiled kernels warn about an integer cast at every first call: noise for our users."""
    from numba.core.errors import NumbaTypeSafetyWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaTypeSafetyWarning)
        yield


def _ranx_runs(runs: list[Run], names: list[str], queries=None):
    from ranx import Run as RanxRun

    return [RanxRun.from_dict({q: dict(docs) for q, docs in run.items() if queries is None or q in queries}, name=name)
            for run, name in zip(runs, names)]


def optimize(fusion: Fusion, runs: list[Run], names: list[str], qrels_path: str, metric: str) -> Fusion:
    """`fusion` with its parameters learned by ranx's grid search on the judged queries the runs rank."""
    from ranx import Qrels, optimize_fusion

    qrels = read_qrels(qrels_path)
    queries = sorted(qrels.keys() & runs[0].keys())
    if not queries:
        raise InputError(qrels_path, "no judged query is ranked by the runs: nothing to optimise on")
    print(f"optimising {fusion.method} for {metric} on {len(queries)} judged queries of {qrels_path}", file=sys.stderr)
    with quiet_numba():
        params = optimize_fusion(Qrels.from_dict({q: qrels[q] for q in queries}), _ranx_runs(runs, names, set(queries)),
                                 norm=fusion.ranx_norm(), method=fusion.method, metric=metric, show_progress=False)
    return Fusion(fusion.method, fusion.norm, _plain(params))


def _plain(params: dict) -> dict:
    """ranx's parameters as JSON values (its weights come back as tuples, some numbers as numpy scalars)."""
    return {k: [float(x) for x in v] if isinstance(v, (list, tuple)) else v.item() if hasattr(v, "item") else v
            for k, v in params.items()}


def fuse(fusion: Fusion, runs: list[Run], names: list[str]) -> Run:
    """The fused run {qid: [(doc id, score), …]}: ranx's fusion, ranked by score, equal scores by document id."""
    from ranx import fuse as ranx_fuse

    with quiet_numba():
        fused = ranx_fuse(_ranx_runs(runs, names), norm=fusion.ranx_norm(), method=fusion.method,
                          params=fusion.params).to_dict()
    return {qid: sorted(((d, float(s)) for d, s in fused[qid].items()), key=lambda item: (-item[1], item[0]))
            for qid in runs[0]}


def save_fusion(path, fusion: Fusion, names: list[str], qrels: str, metric: str) -> None:
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump({"method": fusion.method, "norm": fusion.norm, "params": fusion.params, "runs": names,
                   "optimized_on": qrels, "metric": metric}, f, indent=2)
        f.write("\n")
