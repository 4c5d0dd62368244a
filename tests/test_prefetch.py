"""The data worker: the same micro-batches in the same order, with or without it; errors where they belong; the
time the steps waited for data measured either way."""
from __future__ import annotations

import json
import threading
import time

import pytest
from safetensors.torch import load_file

from bigrerank import cli
from bigrerank.training.batches import micro_positions
from bigrerank.training.prefetch import Prefetcher
from tests.tiny import tiny_model_dir, write_groups


def test_positions_cover_every_micro_step_in_training_order():
    assert list(micro_positions(1, 4, 2, steps_per_epoch=2)) == [(0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert list(micro_positions(3, 3, 2, steps_per_epoch=2)) == []


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_batches_come_in_order_and_end(depth):
    batches = Prefetcher(lambda epoch, index: (epoch, index, threading.current_thread().name),
                         [(0, i) for i in range(5)], depth)
    got = [batches.next() for _ in range(5)]
    assert [(e, i) for e, i, _ in got] == [(0, i) for i in range(5)]
    assert {name for _, _, name in got} == ({"bigrerank-data"} if depth else {threading.current_thread().name})
    with pytest.raises(StopIteration):
        batches.next()
    batches.close()


def test_a_worker_error_is_raised_at_its_batch_and_the_worker_stops():
    def produce(epoch, index):
        if index == 2:
            raise ValueError("groups.jsonl:3: field 'neg': not a list")
        return index

    batches = Prefetcher(produce, [(0, i) for i in range(6)], depth=2)
    assert [batches.next(), batches.next()] == [0, 1]
    with pytest.raises(ValueError, match="groups.jsonl:3"):
        batches.next()
    batches.close()
    assert not batches._thread.is_alive()


def test_the_wait_is_counted_and_a_worker_ahead_hides_the_drawing():
    def slow(epoch, index):
        time.sleep(0.05)
        return index

    inline = Prefetcher(slow, [(0, i) for i in range(4)], depth=0)
    for _ in range(4):
        inline.next()
    ahead = Prefetcher(slow, [(0, i) for i in range(4)], depth=4)
    time.sleep(0.4)  # the training thread busy elsewhere: the worker draws meanwhile
    for _ in range(4):
        ahead.next()
    ahead.close()
    assert inline.wait_s >= 0.2 and ahead.wait_s < 0.05


def test_closing_a_worker_blocked_on_a_full_queue_stops_it():
    batches = Prefetcher(lambda epoch, index: index, [(0, i) for i in range(100)], depth=1)
    assert batches.next() == 0
    batches.close()
    assert not batches._thread.is_alive()


def test_training_is_the_same_with_and_without_the_worker_and_logs_the_wait(tmp_path):
    model, train = tiny_model_dir(tmp_path / "model", dropout=0.1), write_groups(tmp_path / "g.jsonl", queries=16)
    outs = {}
    for depth in (0, 2):
        outs[depth] = tmp_path / f"prefetch{depth}"
        assert cli.main(["train", "--model_name_or_path", str(model), "--train_path", str(train), "--output_dir",
                         str(outs[depth]), "--ds_config", "ds_configs/zero0.json", "--train_group_size", "4",
                         "--max_len", "32", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps",
                         "2", "--max_steps", "5", "--logging_steps", "1", "--num_train_epochs", "2",
                         "--prefetch_micro_batches", str(depth)]) == 0
    rows = {d: [json.loads(line) for line in (o / "train_log.jsonl").read_text().splitlines()] for d, o in outs.items()}
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[2]]
    assert all(r["data_wait_s"] >= 0 for rs in rows.values() for r in rs)
    a, b = load_file(str(outs[0] / "model.safetensors")), load_file(str(outs[2] / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
