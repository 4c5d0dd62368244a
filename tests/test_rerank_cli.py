"""`bigrerank rerank` on both input forms, multi-rank sharding, and every bad input leaving no file behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bigrerank import RerankerForInference
from bigrerank.cli import main as cli
from bigrerank.data.collection import passage_text
from bigrerank.distributed import free_port
from tests.helpers import ROOT
from tests.tiny import spread_model_dir

QUERIES = {"q1": "weather in new york", "q2": "python code", "q3": "what is cold"}
CORPUS = {"d1": ("new york", "it is cold today"), "d2": ("", "what is python"),
          "d3": ("code", "the code of python is new"), "d4": ("", "weather of the day")}
RUN = [("q2", "d3", 9.0), ("q2", "d2", 8.0), ("q2", "d1", 1.0), ("q1", "d1", 5.0), ("q1", "d4", 4.0),
       ("q3", "d4", 3.0), ("q3", "d1", 2.0), ("q3", "d2", 1.5)]


def write_jsonl(path, rows):
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def write_trec(path, rows):
    ranks: dict[str, int] = {}
    lines = []
    for qid, pid, score in rows:
        ranks[qid] = ranks.get(qid, 0) + 1
        lines.append(f"{qid} Q0 {pid} {ranks[qid]} {score} bm25\n")
    Path(path).write_text("".join(lines))
    return str(path)


def read_scores(path) -> list[tuple[str, str, float]]:
    return [(q, p, float(s)) for q, p, s in (line.split("\t") for line in Path(path).read_text().splitlines())]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(spread_model_dir(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    d = tmp_path_factory.mktemp("collection")
    return {
        "queries": write_jsonl(d / "queries.jsonl", [{"_id": q, "text": t} for q, t in QUERIES.items()]),
        "corpus": write_jsonl(d / "corpus.jsonl", [{"_id": i, "title": t, "text": x} for i, (t, x) in CORPUS.items()]),
        "run": write_trec(d / "run.trec", RUN),
    }


def rerank(model_dir, *args) -> int:
    return cli(["rerank", "--model", model_dir, *map(str, args)])


def run_args(collection):
    return ["--run", collection["run"], "--queries", collection["queries"], "--corpus", collection["corpus"]]


def assert_nothing_written(directory: Path):
    """Neither the score file nor a temp file of it exists."""
    assert not (directory / "s.tsv").exists()
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []


def test_run_form_scores_every_candidate_in_run_order(model_dir, collection, tmp_path):
    out = tmp_path / "scores.tsv"
    assert rerank(model_dir, *run_args(collection), "--output", out, "--batch_size", 3) == 0
    rows = read_scores(out)
    assert [(q, p) for q, p, _ in rows] == [(q, p) for q, p, _ in RUN]
    reranker = RerankerForInference.from_pretrained(model_dir, device="cpu")
    expected = reranker.score([QUERIES[q] for q, _, _ in RUN], [passage_text(*CORPUS[p]) for _, p, _ in RUN])
    assert [s for _, _, s in rows] == pytest.approx(expected, abs=1e-6)


def test_run_form_depth_keeps_each_querys_top_k(model_dir, collection, tmp_path):
    out = tmp_path / "scores.tsv"
    assert rerank(model_dir, *run_args(collection), "--output", out, "--depth", 2) == 0
    assert [(q, p) for q, p, _ in read_scores(out)] == [("q2", "d3"), ("q2", "d2"), ("q1", "d1"), ("q1", "d4"),
                                                        ("q3", "d4"), ("q3", "d1")]


def test_passage_text_joins_title_and_text():
    assert passage_text("new york", "it is cold") == "new york it is cold"
    assert passage_text("", "it is cold") == "it is cold"


def pair_rows(tokenizer, as_ids: bool):
    def content(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"] if as_ids else text
    return [{"qid": q, "pid": p, "qry": content(QUERIES[q]), "psg": content(passage_text(*CORPUS[p]))}
            for q, p, _ in RUN]


def test_token_id_pairs_and_text_pairs_give_the_same_scores(model_dir, collection, tmp_path):
    tokenizer = RerankerForInference.from_pretrained(model_dir, device="cpu").tokenizer
    text_in = write_jsonl(tmp_path / "text.jsonl", pair_rows(tokenizer, as_ids=False))
    id_rows = [{"qry": r["qry"], "psg": r["psg"]} for r in pair_rows(tokenizer, as_ids=True)]
    ids_in = write_jsonl(tmp_path / "ids.jsonl", id_rows)
    ids_file = tmp_path / "ids.tsv"
    ids_file.write_text("".join(f"{q}\t{p}\n" for q, p, _ in RUN))
    assert rerank(model_dir, "--input", text_in, "--output", tmp_path / "a.tsv") == 0
    assert rerank(model_dir, "--input", ids_in, "--ids", ids_file, "--output", tmp_path / "b.tsv") == 0
    assert rerank(model_dir, *run_args(collection), "--output", tmp_path / "c.tsv") == 0
    assert read_scores(tmp_path / "a.tsv") == read_scores(tmp_path / "b.tsv") == read_scores(tmp_path / "c.tsv")


def test_pairs_are_grouped_by_query_in_input_order(model_dir, tmp_path):
    rows = [{"qid": q, "pid": p, "qry": QUERIES[q], "psg": CORPUS[p][1]}
            for q, p in [("q1", "d1"), ("q2", "d2"), ("q1", "d3"), ("q3", "d4"), ("q2", "d1")]]
    assert rerank(model_dir, "--input", write_jsonl(tmp_path / "p.jsonl", rows), "--output", tmp_path / "s.tsv") == 0
    assert [(q, p) for q, p, _ in read_scores(tmp_path / "s.tsv")] == [("q1", "d1"), ("q1", "d3"), ("q2", "d2"),
                                                                         ("q2", "d1"), ("q3", "d4")]


def test_chunking_and_tokenize_ahead_do_not_change_scores(model_dir, collection, tmp_path):
    assert rerank(model_dir, *run_args(collection), "--output", tmp_path / "a.tsv") == 0
    assert rerank(model_dir, *run_args(collection), "--output", tmp_path / "b.tsv", "--chunk_size", 3,
                  "--batch_size", 2) == 0
    assert rerank(model_dir, *run_args(collection), "--output", tmp_path / "c.tsv", "--chunk_size", 3,
                  "--no_tokenize_ahead") == 0
    a, b, c = (read_scores(tmp_path / n) for n in ("a.tsv", "b.tsv", "c.tsv"))
    assert [r[:2] for r in a] == [r[:2] for r in b] == [r[:2] for r in c]
    assert [r[2] for r in b] == pytest.approx([r[2] for r in a], abs=1e-5)
    assert [r[2] for r in c] == pytest.approx([r[2] for r in a], abs=1e-5)


def test_bf16_on_cpu_works_and_fp16_is_refused(model_dir, collection, tmp_path, capsys):
    assert rerank(model_dir, *run_args(collection), "--output", tmp_path / "bf16.tsv", "--bf16") == 0
    assert len(read_scores(tmp_path / "bf16.tsv")) == len(RUN)
    assert rerank(model_dir, *run_args(collection), "--output", tmp_path / "fp16.tsv", "--fp16") == 2
    assert "--fp16 needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "fp16.tsv").exists()


@pytest.mark.parametrize("flags, message", [
    ([], "give exactly one input"),
    (["--input", "x.jsonl", "--run", "r.trec"], "give --input or --run, not both"),
    (["--run", "r.trec"], "--run needs --queries and --corpus"),
    (["--input", "x.jsonl", "--depth", "3"], "go with --run"),
    (["--input", "x.jsonl", "--batch_size", "0"], "--batch_size must be at least 1"),
])
def test_wrong_flag_combinations_are_usage_errors(model_dir, tmp_path, capsys, flags, message):
    assert rerank(model_dir, *flags, "--output", tmp_path / "s.tsv") == 2
    assert message in capsys.readouterr().err


def ids_lines(rows):
    return "".join(f"{q}\t{p}\n" for q, p in rows)


BAD_PAIR_INPUTS = {
    "unknown token id": ('{"qid": "q1", "pid": "d1", "qry": [5, 99999], "psg": [6]}\n', None,
                         "p.jsonl:1: field 'qry': token id 99999 outside"),
    "negative token id": ('{"qid": "q1", "pid": "d1", "qry": [5], "psg": [-1]}\n', None, "p.jsonl:1: field 'psg'"),
    "duplicate pair": ('{"qid": "q1", "pid": "d1", "qry": "a", "psg": "b"}\n' * 2, None,
                       "p.jsonl:2: duplicate pair (qid 'q1', pid 'd1'), first on line 1"),
    "empty input": ("\n", None, "p.jsonl: no pairs"),
    "missing ids": ('{"qry": "a", "psg": "b"}\n', None, "p.jsonl:1: field 'qid': missing (or give the ids file with --ids)"),
    "missing passage": ('{"qid": "q1", "pid": "d1", "qry": "a"}\n', None, "p.jsonl:1: field 'psg': missing"),
    "number as passage": ('{"qid": "q1", "pid": "d1", "qry": "a", "psg": 7}\n', None,
                          "p.jsonl:1: field 'psg': expected text or a list of token ids, got int"),
    "id with space": ('{"qid": "q 1", "pid": "d1", "qry": "a", "psg": "b"}\n', None, "field 'qid': ids must not"),
    "ids row disagrees": ('{"qid": "q1", "pid": "d1", "qry": "a", "psg": "b"}\n'
                          '{"qid": "q1", "pid": "d2", "qry": "a", "psg": "b"}\n',
                          ids_lines([("q1", "d1"), ("q1", "d9")]), "ids.tsv:2: row (q1, d9) disagrees with"),
    "ids file short": ('{"qry": "a", "psg": "b"}\n{"qry": "a", "psg": "c"}\n', ids_lines([("q1", "d1")]),
                       "p.jsonl:2: no matching row in ids file"),
    "ids file long": ('{"qry": "a", "psg": "b"}\n', ids_lines([("q1", "d1"), ("q1", "d2")]),
                      "ids.tsv:2: no matching JSON line"),
    "ids wrong columns": ('{"qry": "a", "psg": "b"}\n', "q1\td1\textra\n", "ids.tsv:1: expected 'qid<TAB>pid'"),
    "bad json": ('{"qid": "q1", \n', None, "p.jsonl:1: malformed JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_PAIR_INPUTS))
def test_bad_pair_inputs_are_located_and_leave_no_file(model_dir, tmp_path, capsys, case):
    pairs, ids, message = BAD_PAIR_INPUTS[case]
    (tmp_path / "p.jsonl").write_text(pairs)
    extra = []
    if ids is not None:
        (tmp_path / "ids.tsv").write_text(ids)
        extra = ["--ids", tmp_path / "ids.tsv"]
    assert rerank(model_dir, "--input", tmp_path / "p.jsonl", *extra, "--output", tmp_path / "s.tsv") == 2
    assert message in capsys.readouterr().err
    assert_nothing_written(tmp_path)


BAD_RUN_INPUTS = {
    "document not in corpus": ("q1 Q0 d1 1 2.0 x\nq1 Q0 d77 2 1.0 x\n", "run.trec:2: document id 'd77' is not in"),
    "query not in queries": ("q1 Q0 d1 1 2.0 x\nq9 Q0 d1 1 1.0 x\n", "run.trec:2: query id 'q9' is not in"),
    "duplicate row": ("q1 Q0 d1 1 2.0 x\nq1 Q0 d1 2 1.0 x\n", "run.trec:2: duplicate row"),
    "wrong column count": ("q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0\n", "run.trec:2: expected 6 TREC columns"),
    "empty run": ("\n", "run.trec: empty run"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUN_INPUTS))
def test_bad_run_inputs_are_located_and_leave_no_file(model_dir, collection, tmp_path, capsys, case):
    run, message = BAD_RUN_INPUTS[case]
    (tmp_path / "run.trec").write_text(run)
    args = ["--run", tmp_path / "run.trec", "--queries", collection["queries"], "--corpus", collection["corpus"]]
    assert rerank(model_dir, *args, "--output", tmp_path / "s.tsv") == 2
    assert message in capsys.readouterr().err
    assert_nothing_written(tmp_path)


def test_bad_model_and_collection_files_are_located(model_dir, collection, tmp_path, capsys):
    assert rerank(str(tmp_path), *run_args(collection), "--output", tmp_path / "s.tsv") == 2
    assert "not a Hugging Face model directory" in capsys.readouterr().err
    (tmp_path / "q.jsonl").write_text('{"_id": "q1"}\n')
    args = ["--run", collection["run"], "--queries", tmp_path / "q.jsonl", "--corpus", collection["corpus"]]
    assert rerank(model_dir, *args, "--output", tmp_path / "s.tsv") == 2
    assert "q.jsonl:1: field 'text': missing" in capsys.readouterr().err
    assert rerank(model_dir, *run_args(collection), "--output", tmp_path / "s.tsv", "--max_len", 4096) == 2
    assert "max_len 4096 exceeds the model's 128 positions" in capsys.readouterr().err
    assert_nothing_written(tmp_path)


@pytest.mark.slow
def test_two_ranks_give_the_one_process_result(model_dir, collection, tmp_path):
    single, multi = tmp_path / "single.tsv", tmp_path / "multi.tsv"
    assert rerank(model_dir, *run_args(collection), "--output", single, "--batch_size", 2) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": "2", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "launch/rerank.py", "--model", model_dir, *run_args(collection), "--output", str(multi),
               "--batch_size", "2"]
    procs = [subprocess.Popen(command, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "2 rank(s)" in outputs[0]
    a, b = read_scores(single), read_scores(multi)
    assert [r[:2] for r in b] == [r[:2] for r in a]
    assert [r[2] for r in b] == pytest.approx([r[2] for r in a], abs=1e-6)
