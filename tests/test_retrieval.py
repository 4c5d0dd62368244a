"""BM25 first stage: bm25_run and `bigrerank retrieve`."""

import pytest

from bigrerank.cli import main as cli
from bigrerank.data.collection import read_run
from bigrerank.retrieval import bm25_run, write_trec
from tests.tiny import write_beir

CORPUS = {
    "d1": ("Weather", "The weather in New York is cold today."),
    "d2": ("Python", "Python code runs on many machines; the interpreter reads code."),
    "d3": ("", "Cooking pasta needs boiling water and salt."),
    "d4": ("Snakes", "A python is a large snake found in tropical regions."),
}
QUERIES = {"q1": "cold weather in new york", "q2": "boiling pasta", "q3": "running python code", "q4": "zebra"}


def test_known_top_hits():
    run = bm25_run(CORPUS, QUERIES, depth=10)
    assert run["q1"][0][0] == "d1"
    assert run["q2"][0][0] == "d3"
    assert [d for d, _ in run["q3"][:2]] == ["d2", "d4"]
    assert run["q4"] == []  # shares no term with any document


def test_scores_descend_and_depth_limits():
    run = bm25_run(CORPUS, QUERIES, depth=1)
    assert all(len(ranked) <= 1 for ranked in run.values())
    full = bm25_run(CORPUS, {"q3": QUERIES["q3"]}, depth=100)["q3"]
    assert [s for _, s in full] == sorted((s for _, s in full), reverse=True)
    assert all(s > 0 for _, s in full)


def test_title_is_searched():
    run = bm25_run({"a": ("Snakes", "large reptiles"), "b": ("", "large rivers")}, {"q": "snakes"}, depth=5)
    assert run["q"] == [("a", pytest.approx(run["q"][0][1]))]


def test_stemming_matches_word_forms():
    run = bm25_run({"a": ("", "he runs daily"), "b": ("", "she sleeps")}, {"q": "running"}, depth=5)
    assert [d for d, _ in run["q"]] == ["a"]


def test_write_trec_round_trips(tmp_path):
    run = bm25_run(CORPUS, QUERIES, depth=3)
    write_trec(run, tmp_path / "run.trec")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[0].split()[1::2] == ["Q0", "1", "bm25s"]
    back = read_run(tmp_path / "run.trec")
    assert {q: [d for d, _ in r] for q, r in back.items()} == {q: [d for d, _ in r] for q, r in run.items() if r}


def _write_beir(tmp_path):
    write_beir(tmp_path, CORPUS, QUERIES)
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\nq9\td1\t1\n")


def test_cli_with_split_qrels(tmp_path, capsys):
    _write_beir(tmp_path)
    out = tmp_path / "run.trec"
    code = cli(["retrieve", "--corpus", str(tmp_path / "corpus.jsonl"), "--queries", str(tmp_path / "queries.jsonl"),
                "--out", str(out), "--depth", "2", "--split_qrels", str(tmp_path / "qrels.tsv")])
    assert code == 0
    run = read_run(out)
    assert set(run) == {"q1", "q2"} and run["q1"][0][0] == "d1" and all(len(r) <= 2 for r in run.values())
    assert "skipped 1 judged queries absent" in capsys.readouterr().out


def test_cli_bad_corpus_is_located_and_writes_nothing(tmp_path, capsys):
    _write_beir(tmp_path)
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": ["a"]}\n')
    out = tmp_path / "run.trec"
    code = cli(["retrieve", "--corpus", str(tmp_path / "corpus.jsonl"), "--queries", str(tmp_path / "queries.jsonl"),
                "--out", str(out)])
    assert code == 2
    assert "corpus.jsonl:2: field 'text'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "qrels.tsv", "queries.jsonl"]


def test_cli_rejects_zero_depth(tmp_path, capsys):
    _write_beir(tmp_path)
    code = cli(["retrieve", "--corpus", str(tmp_path / "corpus.jsonl"), "--queries", str(tmp_path / "queries.jsonl"),
                "--out", str(tmp_path / "run.trec"), "--depth", "0"])
    assert code == 2 and "--depth" in capsys.readouterr().err
    assert not (tmp_path / "run.trec").exists()
