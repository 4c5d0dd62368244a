"""Grouped training data: both formats give the same pairs; sampling is deterministic per (seed, epoch, query)."""
from __future__ import annotations

import logging

import numpy as np

from bigrerank.data import grouped
from bigrerank.data.grouped import GroupSampler, load_groups
from bigrerank.data.pairs import PairEncoder
from bigrerank.training.batches import encode_micro_batch
from bigrerank.training.steps import StepMode
from tests.tiny import tiny_tokenizer, write_groups


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
    a = encode_micro_batch(groups_text, encoder, StepMode(), 0, 1, text=True)
    b = encode_micro_batch(groups_ids, encoder, StepMode(), 0, 1, text=False)
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
