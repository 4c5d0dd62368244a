"""`bigrerank eval --compare A B`: per-metric values, B - A and paired significance, against scipy computed apart."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import ttest_rel

from bigrerank.cli import main as cli
from bigrerank.evaluation.compare import compare
from bigrerank.evaluation.metrics import evaluate, per_query

QUERIES = [f"q{i:02d}" for i in range(30)]
QRELS = {q: {f"{q}-rel": 1} for q in QUERIES}


def ranking(q, rank):
    """A run row list for q with its relevant document at `rank` among 10 (scores falling)."""
    docs = [f"{q}-n{i}" for i in range(9)]
    docs.insert(rank - 1, f"{q}-rel")
    return [(d, 10.0 - i) for i, d in enumerate(docs)]


def write(path, run):
    with open(path, "w") as f:
        for q, rows in run.items():
            for rank, (d, s) in enumerate(rows, start=1):
                f.write(f"{q} Q0 {d} {rank} {s} x\n")
    return path


# A: relevant at rank 4 (RR 1/4) everywhere; B: at rank 1 except every 10th query (rank 5)
RUN_A = {q: ranking(q, 4) for q in QUERIES}
RUN_B = {q: ranking(q, 5 if i % 10 == 0 else 1) for i, q in enumerate(QUERIES)}
# B but one query better than A: a difference on 1 of 30 queries
RUN_ONE = {q: ranking(q, 1 if i == 0 else 4) for i, q in enumerate(QUERIES)}


@pytest.fixture
def files(tmp_path):
    qrels = tmp_path / "qrels"
    qrels.write_text("".join(f"{q} 0 {d} {g}\n" for q, docs in QRELS.items() for d, g in docs.items()))
    return {"qrels": qrels, "a": write(tmp_path / "a.trec", RUN_A), "b": write(tmp_path / "b.trec", RUN_B),
            "one": write(tmp_path / "one.trec", RUN_ONE), "dir": tmp_path}


def rr(run):
    return np.array([1 / next(i for i, (d, _) in enumerate(run[q], 1) if d.endswith("-rel")) for q in QUERIES])


@pytest.mark.parametrize("test", ["student", "bootstrap"])
def test_a_clearly_better_run_is_significant(test):
    (r,) = compare(per_query(QRELS, RUN_A, ["RR@10"]), per_query(QRELS, RUN_B, ["RR@10"]), test=test)
    a, b = rr(RUN_A), rr(RUN_B)
    assert (r.a, r.b) == (pytest.approx(a.mean()), pytest.approx(b.mean()))
    assert r.delta == pytest.approx(b.mean() - a.mean()) and r.delta > 0.6
    assert r.low > 0 and r.low <= r.delta <= r.high and r.significant
    if test == "student":
        assert r.p_value == pytest.approx(ttest_rel(a, b).pvalue)
    assert r.p_value < 1e-3


@pytest.mark.parametrize("test", ["student", "bootstrap"])
def test_identical_runs_differ_by_nothing(test):
    (r,) = compare(per_query(QRELS, RUN_A, ["nDCG@10"]), per_query(QRELS, RUN_A, ["nDCG@10"]), test=test)
    assert r.a == r.b == pytest.approx(evaluate(QRELS, RUN_A, ["nDCG@10"])["nDCG@10"])
    assert (r.delta, r.low, r.high, r.p_value, r.significant) == (0.0, 0.0, 0.0, 1.0, False)


def test_one_better_query_in_thirty_is_not_significant():
    results = compare(per_query(QRELS, RUN_A, ["RR@10", "nDCG@10"]), per_query(QRELS, RUN_ONE, ["RR@10", "nDCG@10"]))
    rr_result = results[0]
    assert rr_result.metric == "RR@10" and rr_result.delta == pytest.approx(0.75 / 30)
    assert rr_result.p_value == pytest.approx(ttest_rel(rr(RUN_A), rr(RUN_ONE)).pvalue)  # t = 1: p ~ 0.33
    assert 0.3 < rr_result.p_value < 0.35 and not rr_result.significant
    assert all(not r.significant for r in results)


def test_the_bootstrap_is_seeded():
    args = (per_query(QRELS, RUN_A, ["RR@10"]), per_query(QRELS, RUN_ONE, ["RR@10"]))
    assert compare(*args, test="bootstrap") == compare(*args, test="bootstrap")


def test_cli_prints_the_table_and_writes_json(files, capsys):
    out = files["dir"] / "cmp.json"
    assert cli(["eval", "--qrels", str(files["qrels"]), "--compare", str(files["a"]), str(files["b"]),
                "--metrics", "RR@10", "nDCG@10", "--output", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"A = {files['a']}" and printed[1] == f"B = {files['b']}"
    rows = {line.split()[0]: line.split() for line in printed[4:6]}
    assert rows["RR@10"][1:4] == [f"{rr(RUN_A).mean():.4f}", f"{rr(RUN_B).mean():.4f}",
                                  f"{rr(RUN_B).mean() - rr(RUN_A).mean():+.4f}"]
    assert rows["RR@10"][-1] == "yes" and "two-sided paired t-test" in printed[-1]
    saved = json.loads(out.read_text())
    assert saved["test"] == "student" and saved["b"] == str(files["b"])
    assert saved["metrics"]["RR@10"]["difference"] == pytest.approx(rr(RUN_B).mean() - rr(RUN_A).mean())
    assert saved["metrics"]["RR@10"]["significant"] is True


def test_cli_identical_runs_are_not_significant(files, capsys):
    assert cli(["eval", "--qrels", str(files["qrels"]), "--compare", str(files["a"]), str(files["a"]),
                "--metrics", "nDCG@10", "--test", "bootstrap"]) == 0
    row = capsys.readouterr().out.splitlines()[4].split()
    assert row[0] == "nDCG@10" and row[3] == "+0.0000" and row[-2:] == ["1.0000", "no"]


@pytest.mark.parametrize("extra, message", [
    (["--compare", "A"], "--compare: takes two runs, got 1"),
    (["--compare", "A", "B", "A"], "--compare: takes two runs, got 3"),
    (["--compare", "A", "B", "--run", "A"], "--run: give --run or --compare, not both"),
    (["--compare", "A", "B", "--max_p", "5"], "--max_p: must lie between 0 and 1"),
    (["--compare", "A", "missing.trec"], "missing.trec: no such file"),
    ([], "--run: required (or --compare RUN_A RUN_B)"),
])
def test_cli_mistakes_are_one_line_exit_2(files, capsys, extra, message):
    argv = [str(files["a"]) if a == "A" else str(files["b"]) if a == "B" else a for a in extra]
    assert cli(["eval", "--qrels", str(files["qrels"]), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bigrerank eval: error: ") and message in err[0], err
