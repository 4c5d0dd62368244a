"""Grouped training data: both formats give the same pairs; sampling is deterministic per (seed, epoch, query)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from bigrerank.data import grouped
from bigrerank.data.grouped import GroupSampler, load_groups
from bigrerank.data.pairs import PairEncoder
from bigrerank.errors import InputError
from bigrerank.training.batches import encode_micro_batch
from bigrerank.training.shard import Shard
from tests.tiny import tiny_tokenizer, with_teacher_scores, write_groups


def test_token_id_and_text_formats_give_the_same_input_ids(tmp_path):
    tokenizer = tiny_tokenizer()
    text = load_groups(write_groups(tmp_path / "text.jsonl", 6, seed=3), len(tokenizer), 4, str(tmp_path / "c"))
    ids = load_groups(write_groups(tmp_path / "ids.jsonl", 6, seed=3, as_ids_of=tokenizer), len(tokenizer), 4,
                      str(tmp_path / "c"))
    encoder = PairEncoder(tokenizer, max_len=24)
    for dataset, text_format in ((text, True), (ids, False)):
        assert grouped.is_text(dataset) == text_format
    groups_text = [GroupSampler(text, 4, 7).group(i, 0) for i in range(6)]
    groups_ids = [GroupSampler(ids, 4, 7).group(i, 0) for i in range(6)]
    a = encode_micro_batch(groups_text, encoder, Shard(), chunk_size=0, text=True)
    b = encode_micro_batch(groups_ids, encoder, Shard(), chunk_size=0, text=False)
    assert a.batches[0]["input_ids"].equal(b.batches[0]["input_ids"])
    assert a.batches[0]["token_type_ids"].equal(b.batches[0]["token_type_ids"])
    assert a.batches[0]["input_ids"].shape[1] <= 24


def test_sampling_is_deterministic_and_changes_with_the_epoch(tmp_path):
    dataset = load_groups(write_groups(tmp_path / "g.jsonl", 20, negatives=9), None, 4, str(tmp_path / "c"))
    rank0, rank1 = GroupSampler(dataset, 4, seed=1), GroupSampler(dataset, 4, seed=1)  # two ranks
    assert np.array_equal(rank0.epoch_order(0), rank1.epoch_order(0))
    assert [rank0.group(i, 0) for i in range(20)] == [rank1.group(i, 0) for i in range(20)]
    resumed = GroupSampler(dataset, 4, seed=1)  # a fresh process after a resume: no hidden state
    assert resumed.group(13, 2) == rank0.group(13, 2)
    assert not np.array_equal(rank0.epoch_order(0), rank0.epoch_order(1))
    assert [rank0.group(i, 0) for i in range(20)] != [rank0.group(i, 1) for i in range(20)]
    query, passages = rank0.group(5, 0)
    assert len(passages) == 4 and passages[0] == dataset[5]["pos"][0]["passage"]
    assert len(set(passages[1:])) == 3  # without replacement when there are enough negatives


def test_too_few_negatives_are_sampled_with_replacement_and_said_once(tmp_path, caplog):
    path = write_groups(tmp_path / "g.jsonl", 5, negatives=2)
    dataset = load_groups(path, None, 6, str(tmp_path / "c"))
    sampler = GroupSampler(dataset, 6, seed=0)
    with caplog.at_level(logging.WARNING):
        groups = [sampler.group(i, 0) for i in range(5)]
    assert sum("sampled with replacement" in r.message for r in caplog.records) == 1
    assert "query q0 has 2 negatives, fewer than the 5" in caplog.text
    for i, (_, passages) in enumerate(groups):
        assert len(passages) == 6 and set(passages[1:]) <= {n["passage"] for n in dataset[i]["neg"]}


def _as_flag_embedding(reranker_file, flag_file):
    """The same groups in FlagEmbedding's layout, with its optional keys that bigrerank ignores."""
    lines = []
    for line in reranker_file.read_text().splitlines():
        obj = json.loads(line)
        lines.append(json.dumps({"query": obj["qry"]["query"], "pos": [p["passage"] for p in obj["pos"]],
                                 "neg": [n["passage"] for n in obj["neg"]], "pos_scores": [1.0] * len(obj["pos"]),
                                 "neg_scores": [0.0] * len(obj["neg"]), "prompt": "Is the passage relevant?"}))
    flag_file.write_text("\n".join(lines) + "\n")
    return flag_file


def test_flag_embedding_layout_gives_the_same_groups(tmp_path):
    tokenizer = tiny_tokenizer()
    for ids in (None, tokenizer):
        reranker = write_groups(tmp_path / "reranker.jsonl", 8, negatives=5, as_ids_of=ids)
        flag = _as_flag_embedding(reranker, tmp_path / "flag.jsonl")
        a = load_groups(reranker, len(tokenizer), 4, str(tmp_path / "c"))
        b = load_groups(flag, len(tokenizer), 4, str(tmp_path / "c"))
        assert grouped.is_text(a) == grouped.is_text(b) == (ids is None)
        assert [GroupSampler(a, 4, 3).group(i, 1) for i in range(8)] == [GroupSampler(b, 4, 3).group(i, 1)
                                                                         for i in range(8)]
        assert b[2]["qid"] == "flag.jsonl:3" and [n["pid"] for n in b[2]["neg"]] == [f"neg{i}" for i in range(5)]


@pytest.mark.parametrize("line,expected", [
    ({"query": "a b", "pos": ["c", 7], "neg": ["d"]}, "flag.jsonl:2: field 'pos[1]': expected text"),
    ({"query": "a b", "neg": ["d"]}, "flag.jsonl:2: field 'pos': missing or not a list"),
    ({"query": "a b", "pos": ["c"], "neg": []}, "flag.jsonl:2: field 'neg': no negative passages"),
    ({"query": "", "pos": ["c"], "neg": ["d"]}, "flag.jsonl:2: field 'query': empty"),
    ({"question": "a b", "pos": ["c"], "neg": ["d"]}, "flag.jsonl:2: field 'qry': missing: expected 'qry'"),
])
def test_flag_embedding_layout_errors_name_file_line_and_field(tmp_path, line, expected):
    good = {"query": "x y", "pos": ["z"], "neg": ["w"]}
    path = tmp_path / "flag.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(InputError) as error:
        load_groups(path, None, 4, str(tmp_path / "c"))
    assert expected in str(error.value)


@pytest.mark.parametrize("flag", [False, True])
def test_teacher_scores_follow_the_sampled_passages(tmp_path, flag):
    path = with_teacher_scores(write_groups(tmp_path / "g.jsonl", 6, negatives=5), flag)
    dataset = load_groups(path, None, 4, str(tmp_path / "c"), need_scores=True)
    sampler = GroupSampler(dataset, 4, seed=2)
    for index in range(6):
        row = dataset[index]
        by_passage = {p["passage"]: p["score"] for p in row["pos"] + row["neg"]}
        query, passages, scores = sampler.scored_group(index, 3)
        assert (query, passages) == sampler.group(index, 3)
        assert scores == [by_passage[p] for p in passages]
        assert scores[0] == 100.0 * index  # the positive's


@pytest.mark.parametrize("line,expected", [
    ({"query": "a b", "pos": ["c"], "neg": ["d", "e"]}, "field 'pos_scores': missing (--loss distill needs"),
    ({"query": "a b", "pos": ["c"], "neg": ["d", "e"], "pos_scores": [1], "neg_scores": [0.5]},
     "field 'neg_scores': expected a list of 2 teacher scores, one per 'neg' passage"),
    ({"query": "a b", "pos": ["c"], "neg": ["d"], "pos_scores": [1], "neg_scores": ["high"]},
     "field 'neg_scores[0]': expected a finite number (a teacher score), got 'high'"),
    ({"qry": {"qid": "q", "query": "a"}, "pos": [{"pid": "p", "passage": "c", "score": 2}],
      "neg": [{"pid": "n", "passage": "d"}]}, "field 'neg[0].score': missing (--loss distill needs"),
    ({"qry": {"qid": "q", "query": "a"}, "pos": [{"pid": "p", "passage": "c", "score": float("nan")}],
      "neg": [{"pid": "n", "passage": "d", "score": 1}]}, "field 'pos[0].score': expected a finite number"),
])
def test_missing_or_bad_teacher_scores_are_located(tmp_path, line, expected):
    good = {"query": "x y", "pos": ["z"], "neg": ["w"], "pos_scores": [1.0], "neg_scores": [0.0]}
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(InputError) as error:
        load_groups(path, None, 2, str(tmp_path / "c"), need_scores=True)
    assert f"t.jsonl:2: {expected}" in str(error.value)


def test_teacher_scores_are_optional_unless_the_loss_reads_them(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"query": "x y", "pos": ["z"], "neg": ["w"]}) + "\n")
    dataset = load_groups(path, None, 2, str(tmp_path / "c"))
    assert GroupSampler(dataset, 2, seed=0).scored_group(0, 0)[2] == [None, None]
