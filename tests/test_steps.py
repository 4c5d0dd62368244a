"""Step strategies: dropout masks are replayed in the cached recompute, and the gradient is reduced once per
optimizer step however many chunks and micro-batches there are."""
from __future__ import annotations

import json

import pytest
import torch

from bigrerank.data.pairs import PairEncoder
from bigrerank.losses import lce_loss
from bigrerank.model import load_reranker, pair_scores
from bigrerank.rng import RngState
from bigrerank.training.batches import MicroBatch
from bigrerank.training.shard import group_slice
from bigrerank.training.steps import micro_batch_step
from tests.dist_harness import run_ranks
from tests.helpers import train_argv
from tests.tiny import tiny_model_dir, tiny_tokenizer, write_groups


def test_group_slices_cover_the_group_contiguously():
    for group, world in [(5, 2), (8, 3), (2, 4), (16, 2)]:
        slices = [group_slice(group, r, world) for r in range(world)]
        assert slices[0][0] == 0 and slices[-1][1] == group
        assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
        assert max(e - s for s, e in slices) - min(e - s for s, e in slices) <= 1


def _chunks(encoder, size):
    queries = ["weather in new york", "python code"]
    passages = ["it is cold today", "the code is new", "what of it", "new york weather",
                "python is code", "today in york", "cold code", "the weather"]
    pairs = [encoder.encode_ids(*encoder.token_ids([q, p])) for q in queries for p in passages[:4]]
    return [encoder.collate(pairs[i:i + size]) for i in range(0, len(pairs), size)]


def test_cached_step_replays_dropout_and_matches_a_plain_backward_with_the_same_masks(tmp_path):
    model = load_reranker(str(tiny_model_dir(tmp_path / "m", dropout=0.3, init_range=0.2)))
    model.train()
    encoder = PairEncoder(tiny_tokenizer(), max_len=24)
    batches = _chunks(encoder, 3)  # 8 pairs in chunks of 3, 3, 2
    torch.manual_seed(123)
    start = RngState()
    micro = MicroBatch(batches, (2, 4), torch.ones(2, 4), group_size=4, chunked=True)
    result = micro_batch_step(model, micro, lce_loss, lambda surrogate, last: surrogate.backward())
    cached = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert torch.equal(result.recomputed, result.scores)  # bit for bit: the same dropout masks
    model.zero_grad()

    start.restore()  # the same masks, drawn chunk by chunk, in one plain autograd graph
    scores = torch.cat([pair_scores(model, b) for b in batches]).view(2, 4)
    assert torch.equal(scores.detach(), result.scores)
    lce_loss(scores).backward()
    for name, param in model.named_parameters():
        assert torch.allclose(cached[name], param.grad, rtol=1e-5, atol=1e-7), name

    torch.manual_seed(999)  # a different RNG stream gives other masks: the replay is what makes them equal
    other = torch.cat([pair_scores(model, b) for b in batches]).view(2, 4)
    assert not torch.equal(other.detach(), result.scores)


def _count_reductions(argv, out_file):
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    from bigrerank import distributed
    from bigrerank.commands.train import parse
    from bigrerank.training import trainer

    calls, per_step = {"n": 0}, []
    original = DeepSpeedZeroOptimizer.reduce_ipg_grads

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    def on_reduced(engine):
        per_step.append(calls["n"])
        calls["n"] = 0

    DeepSpeedZeroOptimizer.reduce_ipg_grads = counting
    try:
        trainer.train(*parse(argv), on_reduced=on_reduced)
    finally:
        DeepSpeedZeroOptimizer.reduce_ipg_grads = original
    if distributed.is_main():
        with open(out_file, "w") as f:
            json.dump(per_step, f)


@pytest.mark.slow
def test_one_gradient_reduction_per_optimizer_step_under_zero2(tmp_path):
    model = tiny_model_dir(tmp_path / "m")
    train = write_groups(tmp_path / "g.jsonl", queries=16)
    out_file = tmp_path / "counts.json"
    config = json.loads(open("ds_configs/zero2.json").read())
    config["zero_optimization"]["reduce_bucket_size"] = 500_000_000  # one bucket: a reduction pass is one call
    (tmp_path / "zero2.json").write_text(json.dumps(config))
    argv = train_argv(model, train, tmp_path / "out", str(tmp_path / "zero2.json"), train_group_size=6, max_len=24,
                      gradient_accumulation_steps=2, grad_cache_chunk_size=3, max_steps=3, logging_steps=None)
    run_ranks(2, _count_reductions, argv, str(out_file))
    # 2 micro-batches x 4 chunks = 8 backward passes per step, one reduction
    assert json.loads(out_file.read_text()) == [1, 1, 1]


def _last_micro_batch_not_finite(argv: list[str], factor: float, weights_file: str):
    """Train with the second loss call (step 1's last micro-batch) multiplied by `factor`; save this rank's
    final weights to weights_file.<rank>."""
    import torch

    from bigrerank import distributed, losses
    from bigrerank.commands.train import parse
    from bigrerank.training import trainer

    calls = {"n": 0}
    original = losses.LOSSES["lce"]

    def scaled_second_call(scores, teacher=None, temperature=1.0):
        calls["n"] += 1
        loss = original.fn(scores, teacher, temperature)
        return loss * factor if calls["n"] == 2 else loss

    losses.LOSSES["lce"] = losses.LossSpec(scaled_second_call)
    try:
        engine = trainer.train(*parse(argv)).engine
    finally:
        losses.LOSSES["lce"] = original
    torch.save({k: v.detach().clone() for k, v in engine.module.state_dict().items()},
               f"{weights_file}.{distributed.rank()}")


@pytest.mark.slow
def test_a_skipped_last_micro_batch_still_reduces_the_others_on_zero0(tmp_path):
    """ZeRO-0, 2 ranks, accumulation 2: a non-finite loss in the last micro-batch skips it, and the first
    micro-batch's gradients are still reduced (DeepSpeed reduces only at a boundary): the replicas stay
    identical and equal a run whose last micro-batch contributes a zero gradient instead."""
    import torch

    model = tiny_model_dir(tmp_path / "m", init_range=0.2)
    train = write_groups(tmp_path / "g.jsonl", queries=16)

    def argv(out):
        return train_argv(model, train, out, "zero0", max_len=24, gradient_accumulation_steps=2,
                          learning_rate="1e-2", max_steps=3, logging_steps=None)

    run_ranks(2, _last_micro_batch_not_finite, argv(tmp_path / "nan"), float("nan"), str(tmp_path / "nan.pt"))
    run_ranks(2, _last_micro_batch_not_finite, argv(tmp_path / "zero"), 0.0, str(tmp_path / "zero.pt"))
    skipped = [torch.load(tmp_path / f"nan.pt.{rank}") for rank in (0, 1)]
    dropped = torch.load(tmp_path / "zero.pt.0")
    assert json.loads((tmp_path / "nan" / "train_log.jsonl").read_text().splitlines()[-1])["step"] == 3
    for name, reference in dropped.items():
        assert torch.equal(skipped[0][name], skipped[1][name]), name  # the replicas did not diverge
        assert torch.equal(skipped[0][name], reference), name
