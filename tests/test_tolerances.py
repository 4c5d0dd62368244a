"""The exactness proofs' checks (tests/reference.py) pass a correct gradient summed in another order, and fail on the
breaks they exist to catch: a dropped micro-batch, a wrong shard, a missing pair, one wrong small tensor, a lost step.

One step of LCE on a tiny BERT reranker, 2 micro-batches of 2 queries x group 5, computed here in plain PyTorch: the
reference sums the 2 micro-batches' backward passes; "another order" scores the same pairs one query at a time and
backpropagates each query's share separately (the sums of a cached, collaborative or multi-rank run), so its gradient
differs from the reference's by rounding only.
"""
from __future__ import annotations

import pytest
import torch

from bigrerank.data.grouped import GroupSampler, load_groups
from bigrerank.data.pairs import PairEncoder
from bigrerank.losses import LOSSES
from bigrerank.model import load_reranker, load_tokenizer
from tests.reference import (GRADIENT_GLOBAL, GRADIENT_TENSOR, ROUNDING, assert_gradients_close, assert_weights_close,
                             difference, reference_state, zero_gradient)
from tests.tiny import tiny_model_dir, write_groups

GROUP, QUERIES, MICRO = 5, 2, 2


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    """(model, score gradient function) of one fixed step: `gradient(pair_weights, per_query)` returns the trained
    parameters' gradient with each pair's score gradient scaled by its weight ((micro, queries, group) tensor)."""
    tmp = tmp_path_factory.mktemp("tolerances")
    model_dir = tiny_model_dir(tmp / "model", init_range=0.2)
    data = write_groups(tmp / "groups.jsonl", queries=8, negatives=6)
    tokenizer = load_tokenizer(str(model_dir))
    sampler = GroupSampler(load_groups(data, len(tokenizer), GROUP), GROUP, seed=42)
    encoder = PairEncoder(tokenizer, 32)
    order = sampler.epoch_order(0)
    micro_batches = []
    for m in range(MICRO):
        groups = [sampler.scored_group(i, 0)[:2] for i in order[m * QUERIES:(m + 1) * QUERIES]]
        micro_batches.append([encoder.encode_texts([q] * GROUP, passages) for q, passages in groups])
    model = load_reranker(str(model_dir))

    def gradient(pair_weights: torch.Tensor, per_query: bool = False) -> dict:
        model.zero_grad()
        for m, queries in enumerate(micro_batches):
            scores = model(**encoder.collate([p for pairs in queries for p in pairs])).logits.view(QUERIES, GROUP)
            leaf = scores.detach().requires_grad_(True)
            LOSSES["lce"].fn(leaf).div(MICRO).backward()
            weighted = leaf.grad * pair_weights[m]
            if not per_query:
                (scores * weighted).sum().backward()
                continue
            for q, pairs in enumerate(queries):  # another summation order: one query's pairs at a time
                again = model(**encoder.collate(pairs)).logits.view(GROUP)
                (again * weighted[q]).sum().backward()
        return {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    return model, gradient


def _weights(**broken) -> torch.Tensor:
    weights = torch.ones(MICRO, QUERIES, GROUP)
    for index, value in broken.values():
        weights[index] = value
    return weights


def test_a_correct_gradient_in_another_summation_order_passes(step):
    _, gradient = step
    reference, reordered = gradient(_weights()), gradient(_weights(), per_query=True)
    found = assert_gradients_close(reordered, reference, "reordered")
    assert 0 < found.global_error  # rounding: the check passes a gradient that is not bit-equal


@pytest.mark.parametrize("break_", ["dropped micro-batch", "wrong shard", "missing pair"])
def test_a_broken_gradient_fails(step, break_):
    _, gradient = step
    reference = gradient(_weights())
    broken = {"dropped micro-batch": _weights(m=((1,), 0.0)),
              # a collaborative rank backpropagating another rank's slice: pairs 0-2 twice, 3-4 never
              "wrong shard": _weights(own=((0, 0, slice(0, 3)), 2.0), other=((0, 0, slice(3, 5)), 0.0)),
              "missing pair": _weights(pair=((1, 1, 4), 0.0))}[break_]
    with pytest.raises(AssertionError):
        assert_gradients_close(gradient(broken), reference, break_)


def test_one_slightly_wrong_small_tensor_fails_where_the_global_bound_cannot_see_it(step):
    """The smallest tensor with a gradient, off by just enough to stay inside the global bound: the per-tensor
    check catches it."""
    _, gradient = step
    reference = gradient(_weights())
    zero = zero_gradient([reference])
    norms = {n: t.double().norm().item() for n, t in reference.items()}
    whole = sum(v * v for v in norms.values()) ** 0.5
    small = min((n for n in norms if n not in zero), key=norms.get)
    scale = GRADIENT_GLOBAL * whole / 2 / norms[small]  # half the global bound, as a fraction of the tensor
    broken = {**reference, small: reference[small] * (1 + scale)}
    found = difference(broken, reference)
    assert found.global_error < GRADIENT_GLOBAL and found.tensor_error > GRADIENT_TENSOR, found
    with pytest.raises(AssertionError):
        assert_gradients_close(broken, reference, small)


def test_a_gradient_where_the_exact_one_is_zero_fails(step):
    """The classifier bias and the key biases have exactly zero LCE gradients; one that grows beyond rounding is a
    break (a mask or a loss that is not shift-invariant), though far inside the global bound."""
    _, gradient = step
    reference = gradient(_weights())
    zero = zero_gradient([reference])
    assert {"classifier.bias", "bert.encoder.layer.0.attention.self.key.bias"} <= zero, zero
    whole = sum(t.double().norm().item() ** 2 for t in reference.values()) ** 0.5
    bias = reference["classifier.bias"]
    broken = {**reference, "classifier.bias": bias + 3 * ROUNDING * whole}
    assert difference(broken, reference).global_error < GRADIENT_GLOBAL
    with pytest.raises(AssertionError):
        assert_gradients_close(broken, reference, "classifier.bias")


def test_weights_after_a_lost_micro_batch_or_step_fail(tmp_path):
    model_dir = tiny_model_dir(tmp_path / "model", init_range=0.2)
    data = write_groups(tmp_path / "groups.jsonl", queries=16, negatives=6)
    common = dict(queries_per_micro=2, group_size=GROUP, lr=1e-3)
    weights, gradients = reference_state(model_dir, data, steps=3, accum=2, **common)
    fewer_steps, _ = reference_state(model_dir, data, steps=2, accum=2, **common)
    one_micro, _ = reference_state(model_dir, data, steps=3, accum=1, **common)
    initial = {n: t.clone() for n, t in load_reranker(str(model_dir)).state_dict().items()}
    assert_weights_close(weights, weights, "itself", gradients, initial)
    for name, other in (("a step lost", fewer_steps), ("micro-batches lost", one_micro)):
        with pytest.raises(AssertionError):
            assert_weights_close(other, weights, name, gradients, initial)
