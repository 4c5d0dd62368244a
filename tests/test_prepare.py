"""`bigrerank prepare train|rerank`: grouped training data and rerank input from a run."""
import json

import pytest

from bigrerank.cli import main as cli
from bigrerank.data.prepare import ids_path
from tests.helpers import CORPUS, prepare_train, read_jsonl, write_prepare_inputs
from tests.tiny import tiny_tokenizer

@pytest.fixture
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    tiny_tokenizer().save_pretrained(directory)
    return directory


def test_train_positives_negatives_and_skips(tmp_path, capsys):
    write_prepare_inputs(tmp_path)
    assert prepare_train(tmp_path) == 0
    groups = {g["qry"]["qid"]: g for g in read_jsonl(tmp_path / "train.jsonl")}
    assert list(groups) == ["q1"]
    q1 = groups["q1"]
    assert q1["qry"] == {"qid": "q1", "query": "weather in new york"}
    assert [p["pid"] for p in q1["pos"]] == ["d1", "d2"]
    assert q1["pos"][0]["passage"] == "Weather new york is cold today"
    # judged-relevant d1/d2 never negatives; judged non-relevant d4 is; run order kept
    assert [n["pid"] for n in q1["neg"]] == ["d4", "d5", "d6", "d3"]
    out = capsys.readouterr().out
    assert "wrote 1 training groups" in out
    assert "skipped 1 queries: judged queries absent from the queries file" in out  # q9
    assert "skipped 1 queries: queries with no judgment of grade >= 1" in out  # q3: only grade 0
    assert "skipped 1 queries: queries with no unjudged-relevant document in the run's top 100" in out  # q2
    assert "skipped 2 queries: run queries without judgments" in out  # q4, q8


def test_train_min_relevance_depth_and_negative_cap(tmp_path):
    write_prepare_inputs(tmp_path)
    assert prepare_train(tmp_path, "--min_relevance", "2", "--depth", "3", "--negatives", "1") == 0
    (q1,) = read_jsonl(tmp_path / "train.jsonl")
    assert [p["pid"] for p in q1["pos"]] == ["d1"]
    assert [n["pid"] for n in q1["neg"]] == ["d4"]  # d2 (grade 1) is excluded although not a positive


def test_train_token_ids_agree_with_text(tmp_path, tokenizer_dir):
    write_prepare_inputs(tmp_path)
    assert prepare_train(tmp_path) == 0
    assert prepare_train(tmp_path, "--tokenizer", str(tokenizer_dir), "--max_len", "8", out="ids.jsonl") == 0
    tokenizer = tiny_tokenizer()
    text_groups, id_groups = read_jsonl(tmp_path / "train.jsonl"), read_jsonl(tmp_path / "ids.jsonl")
    assert len(text_groups) == len(id_groups)
    for text, ids in zip(text_groups, id_groups):
        expected = tokenizer(text["qry"]["query"], add_special_tokens=False)["input_ids"][:8]
        assert ids["qry"] == {"qid": text["qry"]["qid"], "query": expected}
        for side in ("pos", "neg"):
            assert [p["pid"] for p in ids[side]] == [p["pid"] for p in text[side]]
            for t, i in zip(text[side], ids[side]):
                assert i["passage"] == tokenizer(t["passage"], add_special_tokens=False)["input_ids"][:8]
                assert tokenizer.cls_token_id not in i["passage"] and len(i["passage"]) <= 8


def test_tokenization_in_parallel_matches_serial(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    write_prepare_inputs(tmp_path)
    assert prepare_train(tmp_path, "--tokenizer", str(tokenizer_dir), out="serial.jsonl") == 0
    assert prepare_train(tmp_path, "--tokenizer", str(tokenizer_dir), "--num_proc", "2", out="parallel.jsonl") == 0
    assert (tmp_path / "serial.jsonl").read_text() == (tmp_path / "parallel.jsonl").read_text()


def _rerank(tmp_path, *extra, out="pairs.jsonl"):
    return cli(["prepare", "rerank", "--run", str(tmp_path / "run.trec"), "--queries", str(tmp_path / "queries.jsonl"),
                "--corpus", str(tmp_path / "corpus.jsonl"), "--out", str(tmp_path / out), *extra])


def test_rerank_pairs_and_ids_file_agree(tmp_path, capsys):
    write_prepare_inputs(tmp_path)
    assert _rerank(tmp_path, "--depth", "2") == 0
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    ids = [tuple(line.split("\t")) for line in (tmp_path / "pairs.ids.tsv").read_text().splitlines()]
    assert ids == [(p["qid"], p["pid"]) for p in pairs]
    assert ids == [("q1", "d2"), ("q1", "d4"), ("q2", "d3"), ("q3", "d5"), ("q3", "d6"), ("q4", "d6"), ("q4", "d4")]
    assert pairs[0] == {"qid": "q1", "pid": "d2", "qry": "weather in new york", "psg": "the weather of new york"}
    assert "skipped 1 queries: run queries absent from the queries file" in capsys.readouterr().out  # q8


def test_rerank_token_ids(tmp_path, tokenizer_dir):
    write_prepare_inputs(tmp_path)
    assert _rerank(tmp_path, "--depth", "1", "--tokenizer", str(tokenizer_dir), "--max_len", "4") == 0
    first = read_jsonl(tmp_path / "pairs.jsonl")[0]
    tokenizer = tiny_tokenizer()
    assert first["qry"] == tokenizer("weather in new york", add_special_tokens=False)["input_ids"][:4]
    assert first["psg"] == tokenizer("the weather of new york", add_special_tokens=False)["input_ids"][:4]


def test_ids_path():
    assert ids_path("out/pairs.jsonl").as_posix() == "out/pairs.ids.tsv"


def _assert_nothing_written(tmp_path):
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "qrels.tsv", "queries.jsonl", "run.trec"]


@pytest.mark.parametrize("case, message", [
    (dict(run=[("q1", ["d1", "d77"])]), "run.trec:2: field 'corpus-id': unknown document id 'd77'"),
    (dict(qrels="q1\t0\td1\t1\nq1\t0\tzz\t1\n"), "qrels.tsv:2: field 'corpus-id': unknown document id 'zz'"),
    (dict(qrels="query-id\tcorpus-id\tscore\nq1\td1\thigh\n"), "qrels.tsv:2: field 'relevance'"),
    (dict(queries={"q1": ""}), "queries.jsonl:1: field 'text': empty"),
    (dict(qrels="q1\t0\td1\t0\n"), "qrels.tsv: no query has both a positive and a negative"),
])
def test_train_bad_input_is_located_and_writes_nothing(tmp_path, capsys, case, message):
    write_prepare_inputs(tmp_path, **case)
    assert prepare_train(tmp_path) == 2
    assert message in capsys.readouterr().err
    _assert_nothing_written(tmp_path)


def test_duplicate_and_malformed_corpus_lines(tmp_path, capsys):
    write_prepare_inputs(tmp_path)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(corpus.read_text() + '{"_id": "d1", "text": "again"}\n')
    assert prepare_train(tmp_path) == 2 and "corpus.jsonl:7: duplicate document id 'd1'" in capsys.readouterr().err
    corpus.write_text('{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "broken\n')
    assert _rerank(tmp_path) == 2 and "corpus.jsonl:2: malformed JSON" in capsys.readouterr().err
    _assert_nothing_written(tmp_path)


def test_rerank_bad_run_writes_neither_file(tmp_path, capsys):
    write_prepare_inputs(tmp_path, run=[("q1", ["d1", "d2"]), ("q2", ["nope"])])
    assert _rerank(tmp_path) == 2
    assert "run.trec:3: field 'corpus-id': unknown document id 'nope'" in capsys.readouterr().err
    _assert_nothing_written(tmp_path)


def test_rerank_with_no_known_query_is_an_error(tmp_path, capsys):
    write_prepare_inputs(tmp_path, run=[("q8", ["d1"])])
    assert _rerank(tmp_path) == 2
    assert "nothing to rerank" in capsys.readouterr().err
    _assert_nothing_written(tmp_path)


def test_usage_and_bad_counts(tmp_path, capsys):
    write_prepare_inputs(tmp_path)
    assert cli(["prepare"]) == 2 and "usage: bigrerank prepare {train|rerank}" in capsys.readouterr().err
    assert prepare_train(tmp_path, "--negatives", "0") == 2
    assert "--negatives must be at least 1" in capsys.readouterr().err
    _assert_nothing_written(tmp_path)


def test_ms_marco_tsv_inputs(tmp_path):
    (tmp_path / "collection.tsv").write_text("".join(f"{d}\t{text}\n" for d, (_, text) in CORPUS.items()))
    (tmp_path / "queries.tsv").write_text("q1\tweather in new york\n")
    (tmp_path / "qrels.txt").write_text("q1 0 d1 1\n")
    (tmp_path / "run.tsv").write_text("q1\td2\t1\nq1\td1\t2\nq1\td5\t3\n")
    code = cli(["prepare", "train", "--corpus", str(tmp_path / "collection.tsv"), "--queries", str(tmp_path / "queries.tsv"),
                "--qrels", str(tmp_path / "qrels.txt"), "--run", str(tmp_path / "run.tsv"), "--out", str(tmp_path / "t.jsonl")])
    assert code == 0
    (group,) = read_jsonl(tmp_path / "t.jsonl")
    assert group["pos"] == [{"pid": "d1", "passage": "new york is cold today"}]
    assert [n["pid"] for n in group["neg"]] == ["d2", "d5"]


def test_documents_without_title_or_text_are_left_out_and_counted(tmp_path, capsys):
    corpus = dict(CORPUS)
    corpus["d6"] = ("", "  ")  # ranked by the run for q1 and q4
    write_prepare_inputs(tmp_path, corpus=corpus)
    out = tmp_path / "train.jsonl"
    assert cli(["prepare", "train", "--corpus", str(tmp_path / "corpus.jsonl"), "--queries",
                str(tmp_path / "queries.jsonl"), "--qrels", str(tmp_path / "qrels.tsv"), "--run",
                str(tmp_path / "run.trec"), "--out", str(out)]) == 0
    assert "left out of every group: 1 documents with neither title nor text" in capsys.readouterr().out
    used = {p["pid"] for line in out.read_text().splitlines() for key in ("pos", "neg") for p in json.loads(line)[key]}
    assert used and "d6" not in used


def test_a_missing_tokenizer_is_named_and_nothing_is_written(tmp_path, capsys):
    write_prepare_inputs(tmp_path)
    assert prepare_train(tmp_path, "--tokenizer", str(tmp_path / "no_tokenizer")) == 2
    assert f"{tmp_path / 'no_tokenizer'}: no such directory" in capsys.readouterr().err
    assert not (tmp_path / "train.jsonl").exists()
