"""`bigrerank fuse`: ranx fusion checked against hand-computed fusions, optimise-then-apply, and bad input."""
from __future__ import annotations

import json

import pytest

from bigrerank.cli import main as cli
from bigrerank.data.collection import read_run
from bigrerank.evaluation.metrics import evaluate

# Each query: x, p (the relevant one), y. Run A puts x first, run B puts y first, both put p second with 0.9 of
# the top score after min-max normalisation, so A alone and B alone rank p second while a weighted sum with
# weight w on A ranks it first exactly when 0.1 < w < 0.9.
QUERIES = ("q1", "q2", "q3")


def run_a(q):
    return [(f"{q}x", 5.0), (f"{q}p", 4.6), (f"{q}y", 1.0)]


def run_b(q):
    return [(f"{q}y", 0.8), (f"{q}p", 0.71), (f"{q}z", 0.0), (f"{q}x", -0.1)]


QRELS = {q: {f"{q}p": 1} for q in QUERIES}


def write_run(path, rows_of, queries=QUERIES, name="r"):
    with open(path, "w") as f:
        for q in queries:
            for rank, (doc, score) in enumerate(rows_of(q), start=1):
                f.write(f"{q} Q0 {doc} {rank} {score} {name}\n")
    return path


@pytest.fixture
def split(tmp_path):
    qrels = tmp_path / "qrels.trec"
    qrels.write_text("".join(f"{q} 0 {d} {g}\n" for q, docs in QRELS.items() for d, g in docs.items()))
    return {"a": write_run(tmp_path / "a.trec", run_a), "b": write_run(tmp_path / "b.trec", run_b),
            "qrels": qrels, "dir": tmp_path}


def fuse(*args) -> int:
    return cli(["fuse", *map(str, args)])


def min_max(rows):
    low, high = min(s for _, s in rows), max(s for _, s in rows)
    return {d: (s - low) / (high - low) for d, s in rows}


def hand_wsum(weights, queries=QUERIES):
    fused = {}
    for q in queries:
        parts = [min_max(run_a(q)), min_max(run_b(q))]
        docs = set().union(*parts)
        fused[q] = {d: sum(w * part.get(d, 0.0) for w, part in zip(weights, parts)) for d in docs}
    return fused


def as_dict(run):
    return {q: dict(docs) for q, docs in run.items()}


def test_wsum_matches_a_hand_computed_weighted_sum_of_min_max_scores(split):
    out = split["dir"] / "fused.trec"
    assert fuse("--runs", split["a"], split["b"], "--method", "wsum", "--weights", "0.25", "0.75",
                "--output", out) == 0
    fused = read_run(out, "trec")
    expected = hand_wsum([0.25, 0.75])
    assert fused.keys() == expected.keys()
    for q in QUERIES:
        assert as_dict(fused)[q] == pytest.approx(expected[q], abs=1e-8)
        assert [d for d, _ in fused[q]] == sorted(expected[q], key=lambda d: (-expected[q][d], d))
    # w = 0.25 on A lies inside (0.1, 0.9): p first everywhere, which neither run achieves alone
    qrels = {q: dict(d) for q, d in QRELS.items()}
    assert evaluate(qrels, fused, ["RR@10"]) == {"RR@10": 1.0}
    assert evaluate(qrels, read_run(split["a"]), ["RR@10"]) == {"RR@10": 0.5}
    assert out.read_text().splitlines()[0].split()[5] == "fused"


def test_rrf_matches_reciprocal_ranks_by_hand(split):
    out = split["dir"] / "rrf.trec"
    assert fuse("--runs", split["a"], split["b"], "--method", "rrf", "--weights", "10", "--output", out) == 0
    fused = as_dict(read_run(out, "trec"))
    for q in QUERIES:
        expected = {}
        for rows in (run_a(q), run_b(q)):
            for rank, (doc, _) in enumerate(rows, start=1):
                expected[doc] = expected.get(doc, 0.0) + 1 / (10 + rank)
        assert fused[q] == pytest.approx(expected, abs=1e-8)


@pytest.mark.slow
def test_optimise_on_one_split_then_apply_the_saved_weights_to_another(split, capsys):
    train_out = split["dir"] / "train.fused.trec"
    assert fuse("--runs", split["a"], split["b"], "--optimize_on", split["qrels"], "--output", train_out) == 0
    saved_path = split["dir"] / "train.fused.fusion.json"
    saved = json.loads(saved_path.read_text())
    assert saved["method"] == "wsum" and saved["norm"] == "min-max" and saved["runs"] == ["a.trec", "b.trec"]
    assert saved["metric"] == "ndcg@10" and saved["optimized_on"] == str(split["qrels"])
    w_a, w_b = saved["params"]["weights"]
    assert 0.1 < w_a < 0.9 and w_a + w_b == pytest.approx(1.0)  # the only perfect weights on this split
    printed = capsys.readouterr().out
    assert f"wsum weight {w_a:g} -> {split['a']}" in printed and str(saved_path) in printed
    qrels = {q: dict(d) for q, d in QRELS.items()}
    assert evaluate(qrels, read_run(train_out), ["nDCG@10"]) == {"nDCG@10": 1.0}

    # another split: new queries, new files; the file's weights apply unchanged, and the file is left alone
    other = split["dir"] / "dev"
    other.mkdir()
    dev_queries = ("q7", "q8")
    dev_a, dev_b = (write_run(other / n, f, dev_queries) for n, f in (("a.trec", run_a), ("b.trec", run_b)))
    before = saved_path.read_bytes()
    applied, explicit = other / "fused.trec", other / "explicit.trec"
    assert fuse("--runs", dev_a, dev_b, "--weights", saved_path, "--output", applied) == 0
    assert fuse("--runs", dev_a, dev_b, "--weights", w_a, w_b, "--output", explicit) == 0
    assert applied.read_text() == explicit.read_text()
    expected = hand_wsum([w_a, w_b], dev_queries)
    assert all(as_dict(read_run(applied))[q] == pytest.approx(expected[q], abs=1e-8) for q in dev_queries)
    assert saved_path.read_bytes() == before
    assert not (other / "fused.fusion.json").exists()
    assert "(learned for a.trec)" in capsys.readouterr().out


def test_rrf_k_is_learned_and_reapplied(split):
    out = split["dir"] / "rrf.trec"
    assert fuse("--runs", split["a"], split["b"], "--method", "rrf", "--optimize_on", split["qrels"],
                "--output", out) == 0
    saved = json.loads((split["dir"] / "rrf.fusion.json").read_text())
    assert saved["method"] == "rrf" and isinstance(saved["params"]["k"], int)
    again = split["dir"] / "again.trec"
    assert fuse("--runs", split["a"], split["b"], "--weights", split["dir"] / "rrf.fusion.json",
                "--output", again) == 0
    assert again.read_text() == out.read_text()


def _learned_file(split):
    out = split["dir"] / "learned.trec"
    assert fuse("--runs", split["a"], split["b"], "--optimize_on", split["qrels"], "--output", out) == 0
    return split["dir"] / "learned.fusion.json"


def _edited(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return path


@pytest.mark.parametrize("case, message", [
    (lambda s: ["--runs", s["a"], s["dir"] / "nope.trec", "--method", "rrf"], "nope.trec: no such file"),
    (lambda s: ["--runs", s["a"], "--method", "rrf"], "--runs: needs at least two runs to fuse, got 1"),
    (lambda s: ["--runs", s["a"], s["a"], "--method", "rrf"], "a.trec: given twice in --runs"),
    (lambda s: ["--runs", s["a"], s["b"], "--weights", "0.2", "0.3", "0.5"],
     "--weights: --method wsum needs one weight per run: 2 runs, 3 weights"),
    (lambda s: ["--runs", s["a"], s["b"], "--method", "wsum"], "--method: wsum needs --weights"),
    (lambda s: ["--runs", s["a"], s["b"], "--method", "rrf", "--weights", "2.5"], "rrf's k must be a positive"),
    (lambda s: ["--runs", s["a"], s["b"], "--method", "sum", "--optimize_on", s["qrels"]],
     "--method sum has no parameters to optimise"),
    (lambda s: ["--runs", s["a"], s["b"], "--weights", "0.5", "0.5", "--optimize_on", s["qrels"]], "not both"),
    (lambda s: ["--runs", s["a"], s["b"], "--weights", s["dir"] / "w.json"], "w.json: no such file"),
    (lambda s: ["--runs", s["a"], s["b"], s["a"].with_name("c.trec"), "--weights", _learned_file(s)],
     "learned.fusion.json: field 'runs': learned for 2 runs, --runs gives 3"),
    (lambda s: ["--runs", s["a"], s["b"], "--weights", _learned_file(s), "--method", "rrf"],
     "field 'method': learned for --method wsum, not rrf"),
    (lambda s: ["--runs", s["a"], s["b"], "--weights", _edited(_learned_file(s), params={"weights": [1, "x"]})],
     "learned.fusion.json: field 'params': --method wsum needs a list of weights"),
    (lambda s: ["--runs", s["a"], s["b"], "--weights", _edited(_learned_file(s), method="rrf", params={"k": 0.5})],
     "field 'params': rrf's k must be a positive integer, got 0.5"),
    (lambda s: ["--runs", s["a"], s["b"], "--method", "sum", "--weights", "0.5", "0.5"],
     "--weights: --method sum takes no parameters"),
    (lambda s: ["--runs", s["a"], write_run(s["dir"] / "short.trec", run_b, QUERIES[:2]), "--method", "rrf"],
     "short.trec: ranks no documents for query 'q3' of"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(split, capsys, case, message):
    (split["dir"] / "c.trec").write_text((split["dir"] / "a.trec").read_text())
    argv = case(split)
    capsys.readouterr()
    out = split["dir"] / "out.trec"
    assert fuse(*argv, "--output", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bigrerank fuse: error: ") and message in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("output", ["a.trec", "qrels.trec"])
def test_an_output_over_an_input_is_refused(split, capsys, output):
    before = (split["dir"] / output).read_text()
    assert fuse("--runs", split["a"], split["b"], "--optimize_on", split["qrels"],
                "--output", split["dir"] / output) == 2
    assert "the output would overwrite the input" in capsys.readouterr().err
    assert (split["dir"] / output).read_text() == before


def test_the_saved_parameters_may_not_land_on_an_input(split, capsys):
    # fused.trec's parameter file is fused.fusion.json: here that name is one of the runs
    clash = split["dir"] / "fused.fusion.json"
    clash.write_text(split["a"].read_text())
    assert fuse("--runs", clash, split["b"], "--optimize_on", split["qrels"],
                "--output", split["dir"] / "fused.trec") == 2
    assert "fused.fusion.json: the output would overwrite the input" in capsys.readouterr().err


def test_an_unknown_method_or_metric_is_refused(split, capsys):
    assert fuse("--runs", split["a"], split["b"], "--method", "magic", "--output", split["dir"] / "o.trec") == 2
    assert "invalid choice: 'magic'" in capsys.readouterr().err
    assert fuse("--runs", split["a"], split["b"], "--metric", "ndgc@10", "--optimize_on", split["qrels"],
                "--output", split["dir"] / "o.trec") == 2
    assert "bigrerank fuse: error: --metric: Metric ndgc not supported" in capsys.readouterr().err
    assert not (split["dir"] / "o.trec").exists()


def test_fuse_is_listed_in_the_cli_help(capsys):
    assert cli(["--help"]) == 0
    assert "fuse " in capsys.readouterr().out
