"""`bigrerank prepare train --negatives_from / --random_negatives / --teacher`."""
from __future__ import annotations

import re

import pytest

from bigrerank.data.grouped import load_groups
from bigrerank.data.negatives import RandomNegatives
from bigrerank.inference.reranker import RerankerForInference
from tests.helpers import CORPUS, prepare_train, read_jsonl, write_prepare_inputs
from tests.tiny import tiny_model_dir

# 40 more documents, so that a random draw has a real choice
BIG_CORPUS = {**CORPUS, **{f"r{i:02d}": ("", f"filler text {i}") for i in range(40)}}


def negatives_by_query(path):
    return {g["qry"]["qid"]: [n["pid"] for n in g["neg"]] for g in read_jsonl(path)}


def test_negatives_from_skips_the_top_ranks(tmp_path, capsys):
    write_prepare_inputs(tmp_path)
    assert prepare_train(tmp_path, "--negatives_from", "3") == 0
    # q1's run: d2 d4 | d5 d1 d6 d3 -- ranks 1-2 skipped, d1 (judged relevant) never a negative
    assert negatives_by_query(tmp_path / "train.jsonl") == {"q1": ["d5", "d6", "d3"]}
    assert prepare_train(tmp_path, "--negatives_from", "6", "--depth", "6", out="deep.jsonl") == 0
    assert negatives_by_query(tmp_path / "deep.jsonl") == {"q1": ["d3"]}
    capsys.readouterr()
    assert prepare_train(tmp_path, "--negatives_from", "2", "--depth", "2", out="none.jsonl") == 0
    # q1's rank 2 is d4 (grade 0): still a negative; q2's only document is at rank 1: skipped, ranks named
    assert negatives_by_query(tmp_path / "none.jsonl") == {"q1": ["d4"]}
    assert "queries with no unjudged-relevant document in the run's ranks 2-2" in capsys.readouterr().out


def test_random_negatives_are_deterministic_distinct_and_never_judged_relevant(tmp_path):
    write_prepare_inputs(tmp_path, corpus=BIG_CORPUS)
    assert prepare_train(tmp_path, "--random_negatives", "5", "--seed", "7") == 0
    assert prepare_train(tmp_path, "--random_negatives", "5", "--seed", "7", out="again.jsonl") == 0
    assert prepare_train(tmp_path, "--random_negatives", "5", "--seed", "8", out="other.jsonl") == 0
    first = negatives_by_query(tmp_path / "train.jsonl")
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "train.jsonl").read_text()
    assert negatives_by_query(tmp_path / "other.jsonl") != first
    # q1: its 4 hard negatives first, then 5 random documents: distinct, in the corpus, not d1/d2 (relevant)
    hard, drawn = first["q1"][:4], first["q1"][4:]
    assert hard == ["d4", "d5", "d6", "d3"] and len(drawn) == len(set(drawn)) == 5
    assert set(drawn) <= BIG_CORPUS.keys() - {"d1", "d2", *hard}
    # q2 had no hard negative (its only run document is its positive): random negatives make it usable
    assert len(first["q2"]) == 5 and "d3" not in first["q2"]


def test_a_querys_draw_does_not_depend_on_the_other_queries():
    sampler = RandomNegatives(BIG_CORPUS, 5, seed=3)
    alone = sampler.draw("q1", exclude=["d1"])
    for other in ("q2", "q3"):
        sampler.draw(other, exclude=[])
    assert sampler.draw("q1", exclude=["d1"]) == alone
    assert RandomNegatives(reversed(list(BIG_CORPUS)), 5, seed=3).draw("q1", exclude=["d1"]) == alone


def test_random_negatives_never_include_excluded_documents_even_when_few_remain():
    documents = [f"d{i}" for i in range(10)]
    relevant = documents[:7]
    for seed in range(20):
        drawn = RandomNegatives(documents, 2, seed).draw("q", exclude=relevant)
        assert len(drawn) == 2 and not set(drawn) & set(relevant)
    # only 3 documents left for 5 asked: all of them
    assert sorted(RandomNegatives(documents, 5, 0).draw("q", exclude=relevant)) == ["d7", "d8", "d9"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("teacher"), seed=3, init_range=0.5)


def test_teacher_scores_every_passage_and_distill_data_reads_them(tmp_path, teacher_dir, capsys):
    write_prepare_inputs(tmp_path, corpus=BIG_CORPUS)
    assert prepare_train(tmp_path, "--random_negatives", "2", "--teacher", str(teacher_dir),
                         "--teacher_batch_size", "3") == 0
    assert "scoring" in capsys.readouterr().out
    teacher = RerankerForInference.from_pretrained(teacher_dir)
    groups = read_jsonl(tmp_path / "train.jsonl")
    assert len(groups) == 2
    for group in groups:
        passages = group["pos"] + group["neg"]
        expected = teacher.score(group["qry"]["query"], [p["passage"] for p in passages])
        assert [p["score"] for p in passages] == pytest.approx(expected, rel=1e-5)  # other batches: other padding
        assert len({round(p["score"], 6) for p in passages}) > 1  # a real model, not a constant
    dataset = load_groups(tmp_path / "train.jsonl", group_size=3, cache_dir=str(tmp_path / "cache"), need_scores=True)
    assert len(dataset) == 2


def test_teacher_scores_do_not_depend_on_tokenized_output(tmp_path, teacher_dir):
    write_prepare_inputs(tmp_path)
    assert prepare_train(tmp_path, "--teacher", str(teacher_dir)) == 0
    assert prepare_train(tmp_path, "--teacher", str(teacher_dir), "--tokenizer", str(teacher_dir), "--max_len", "6",
                  out="ids.jsonl") == 0
    text, ids = read_jsonl(tmp_path / "train.jsonl"), read_jsonl(tmp_path / "ids.jsonl")
    assert [[p["score"] for p in g["pos"] + g["neg"]] for g in text] == \
           [[p["score"] for p in g["pos"] + g["neg"]] for g in ids]
    assert isinstance(ids[0]["pos"][0]["passage"], list)


@pytest.mark.parametrize("extra, message", [
    (["--negatives_from", "0"], "--negatives_from must be at least 1, got 0"),
    (["--negatives_from", "11", "--depth", "10"], "--negatives_from 11 is deeper than --depth 10"),
    (["--random_negatives", "-1"], "--random_negatives must be at least 0, got -1"),
    (["--teacher_batch_size", "0"], "--teacher_batch_size must be at least 1"),
    (["--teacher", "NOT_A_MODEL"], "NOT_A_MODEL: not a Hugging Face model directory (no config.json)"),
])
def test_bad_options_stop_before_writing(tmp_path, capsys, extra, message):
    write_prepare_inputs(tmp_path)
    extra = [str(tmp_path / a) if a == "NOT_A_MODEL" else a for a in extra]
    assert prepare_train(tmp_path, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"bigrerank prepare( train)?: error: ", err[0]) and message in err[0], err
    assert not (tmp_path / "train.jsonl").exists()
