"""`bigrerank convert` (ranks, ties, both formats) and `bigrerank eval` / `evaluate()` against hand-computed values."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bigrerank.cli import main as cli
from bigrerank.data.collection import read_qrels, read_run
from bigrerank.evaluation.metrics import evaluate

# q1 ties d1/d4 at 0.5 (d1 ranks first: document id order); q9 has no judgments; q3 is judged but not in the run.
SCORES = [("q1", "d1", 0.5), ("q1", "d2", 0.9), ("q1", "d3", 0.1), ("q1", "d4", 0.5),
          ("q2", "d2", 0.3), ("q2", "d5", 0.7), ("q9", "d1", 1.0)]
QRELS = [("q1", "d1", 2), ("q1", "d3", 1), ("q1", "d4", 0), ("q2", "d2", 1), ("q3", "d1", 1)]

# Rankings: q1 = d2 d1 d4 d3 (grades 0 2 0 1), q2 = d5 d2 (0 1), q3 = nothing.
EXPECTED = {
    "RR@10": (1 / 2 + 1 / 2 + 0) / 3,
    "AP": ((1 / 2 + 2 / 4) / 2 + 1 / 2 + 0) / 3,
    "R@2": (1 / 2 + 1 + 0) / 3,
    "nDCG@10": ((2 / math.log2(3) + 1 / math.log2(5)) / (2 + 1 / math.log2(3)) + 1 / math.log2(3) + 0) / 3,
}


@pytest.fixture
def files(tmp_path):
    scores = tmp_path / "scores.tsv"
    scores.write_text("".join(f"{q}\t{p}\t{s}\n" for q, p, s in SCORES))
    trec_qrels = tmp_path / "qrels.trec"
    trec_qrels.write_text("".join(f"{q} 0 {d} {g}\n" for q, d, g in QRELS))
    beir_qrels = tmp_path / "qrels.tsv"
    beir_qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in QRELS))
    return {"scores": scores, "trec_qrels": trec_qrels, "beir_qrels": beir_qrels, "dir": tmp_path}


def convert(*args) -> int:
    return cli(["convert", *map(str, args)])


def test_convert_to_marco_ranks_by_score_with_ties_by_document_id(files):
    out = files["dir"] / "run.marco"
    assert convert(files["scores"], "--to", "marco", "--output", out) == 0
    assert out.read_text().splitlines() == ["q1\td2\t1", "q1\td1\t2", "q1\td4\t3", "q1\td3\t4",
                                            "q2\td5\t1", "q2\td2\t2", "q9\td1\t1"]


def test_convert_to_trec_writes_six_columns_with_scores_and_run_name(files):
    out = files["dir"] / "run.trec"
    assert convert("--scores", files["scores"], "--to", "trec", "--output", out, "--run_name", "ce") == 0
    lines = out.read_text().splitlines()
    assert lines[:4] == ["q1 Q0 d2 1 0.9 ce", "q1 Q0 d1 2 0.5 ce", "q1 Q0 d4 3 0.5 ce", "q1 Q0 d3 4 0.1 ce"]
    assert read_run(out, "trec") == read_run(files["scores"], "scores")


@pytest.mark.parametrize("content, message", [
    ("q1\td1\tnot-a-number\n", "s.tsv:1: field 'score': expected a number"),
    ("q1\td1\t1.0\nq1\td1\t2.0\n", "s.tsv:2: duplicate row"),
    ("q1\td1\n", "s.tsv:1: expected 3 columns"),
    ("", "s.tsv: empty run"),
])
def test_convert_bad_score_files_are_located_and_leave_no_file(tmp_path, capsys, content, message):
    (tmp_path / "s.tsv").write_text(content)
    assert convert(tmp_path / "s.tsv", "--to", "trec", "--output", tmp_path / "out.trec") == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tsv"]


def test_evaluate_matches_hand_computed_values(files):
    results = evaluate(read_qrels(files["trec_qrels"]), read_run(files["scores"], "scores"), list(EXPECTED))
    assert list(results) == list(EXPECTED)
    assert results == pytest.approx(EXPECTED, abs=1e-9)


def test_evaluate_accepts_score_dicts_and_counts_missing_queries_as_zero(files):
    qrels = read_qrels(files["trec_qrels"])
    as_dicts = {q: {} for q, _, _ in SCORES}
    for q, p, s in SCORES:
        as_dicts[q][p] = s
    assert evaluate(qrels, as_dicts, list(EXPECTED)) == pytest.approx(EXPECTED, abs=1e-9)
    only_q3 = evaluate(qrels, {"q3": [("d1", 1.0)]}, ["RR@10"])
    assert only_q3 == pytest.approx({"RR@10": 1 / 3})


def test_graded_relevance_threshold_changes_binary_metrics(files):
    qrels = read_qrels(files["trec_qrels"])
    run = read_run(files["scores"], "scores")
    strict = evaluate(qrels, run, ["RR(rel=2)@10", "nDCG@10"])
    assert strict["RR(rel=2)@10"] == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert strict["nDCG@10"] == pytest.approx(EXPECTED["nDCG@10"])


@pytest.mark.parametrize("qrels_key", ["trec_qrels", "beir_qrels"])
@pytest.mark.parametrize("run_format", ["scores", "marco", "trec"])
def test_eval_cli_gives_the_same_metrics_for_every_input_format(files, capsys, qrels_key, run_format):
    run = files["scores"]
    if run_format != "scores":
        run = files["dir"] / f"run.{run_format}"
        assert convert(files["scores"], "--to", run_format, "--output", run) == 0
    out = files["dir"] / "metrics.json"
    assert cli(["eval", "--qrels", str(files[qrels_key]), "--run", str(run), "--output", str(out),
                "--metrics", *EXPECTED]) == 0
    assert json.loads(out.read_text()) == pytest.approx(EXPECTED, abs=1e-9)
    captured = capsys.readouterr()
    assert "nDCG@10" in captured.out and f"{EXPECTED['AP']:.4f}" in captured.out
    assert "3 judged queries (1 without run rows, scored 0); 1 run queries without judgments ignored" in captured.err


def test_eval_cli_defaults_and_metric_aliases(files, capsys):
    out = files["dir"] / "metrics.json"
    assert cli(["eval", "--qrels", str(files["trec_qrels"]), "--run", str(files["scores"]), "--output", str(out)]) == 0
    assert list(json.loads(out.read_text())) == ["RR@10", "nDCG@10", "R@100", "AP"]
    assert cli(["eval", "--qrels", str(files["trec_qrels"]), "--run", str(files["scores"]), "--output", str(out),
                "--metrics", "MRR@10"]) == 0
    assert json.loads(out.read_text()) == pytest.approx({"RR@10": EXPECTED["RR@10"]})


def test_eval_cli_bad_metric_and_bad_qrels_leave_no_file(files, capsys):
    out = files["dir"] / "metrics.json"
    assert cli(["eval", "--qrels", str(files["trec_qrels"]), "--run", str(files["scores"]), "--output", str(out),
                "--metrics", "nDCG@10", "Bogus@3"]) == 2
    assert "unknown metric 'Bogus@3'" in capsys.readouterr().err
    bad = Path(files["dir"]) / "bad.qrels"
    bad.write_text("q1 0 d1 1\nq1 0 d2 high\n")
    assert cli(["eval", "--qrels", str(bad), "--run", str(files["scores"]), "--output", str(out)]) == 2
    assert "bad.qrels:2: field 'relevance': expected an integer" in capsys.readouterr().err
    assert not out.exists() and not [p for p in files["dir"].iterdir() if p.name.startswith(".")]
