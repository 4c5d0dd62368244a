"""One micro-batch step, plain or cached (gradient cache) x local or collaborative, in GradCache's steps.

Every micro-batch goes through the same moves (GradCache's `cache_step`, Gao et al. 2021):

1. forward — plain: one forward with autograd; cached: no-grad chunks (K pairs, or up to N tokens of pairs grouped
   by length), saving the RNG state before each chunk;
2. build the cache — gather the (queries, group) score matrix (collaborative: every rank's slices, see
   shard.py), take the loss and its gradient with respect to the scores, once, and keep this rank's share;
3. forward and backward — plain: through the kept graph; cached: chunk by chunk, recomputed with the same RNG
   state, so dropout draws the same masks.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .. import distributed
from ..model import pair_scores
from ..rng import RngState
from .batches import MicroBatch


@dataclass
class MicroBatchResult:
    loss: torch.Tensor              # the micro-batch loss (detached, same on every rank when collaborative)
    scores: torch.Tensor            # (queries, group) first-pass scores
    recomputed: torch.Tensor | None  # this rank's scores from the autograd pass (cached mode), (queries, width)
    finite: bool


def forward(engine, micro: MicroBatch) -> tuple[torch.Tensor, torch.Tensor | None, list[RngState]]:
    """This rank's (queries, width) scores, detached; plus the autograd graph (plain) or each chunk's RNG state."""
    if not micro.chunked:
        live = pair_scores(engine, micro.batches[0]).view(micro.shape)
        return live.detach(), live, []
    states, chunks = [], []
    with torch.no_grad():
        for batch in micro.batches:
            states.append(RngState())
            chunks.append(pair_scores(engine, batch))
    return micro.in_pair_order(torch.cat(chunks)), None, states


def build_cache(micro: MicroBatch, local: torch.Tensor, loss_fn, **loss_kwargs):
    """(loss, the (queries, group) scores, this rank's masked share of their gradient): the loss taken once."""
    scores = micro.shard.gather(local, micro.group_size)
    leaf = scores.detach().requires_grad_(True)
    loss = loss_fn(leaf, teacher=micro.teacher, **loss_kwargs)
    (score_grad,) = torch.autograd.grad(loss, leaf)
    return loss, scores, micro.shard.own_gradient(score_grad, micro.shape[1]) * micro.real_mask


def forward_backward_chunks(engine, micro: MicroBatch, states: list[RngState], own: torch.Tensor,
                            backward) -> torch.Tensor:
    """Recompute each chunk under its saved RNG state and backpropagate its cached score gradient."""
    flat_grad, pieces, offset = own.reshape(-1), [], 0
    for i, (batch, state) in enumerate(zip(micro.batches, states)):
        state.restore()
        chunk = pair_scores(engine, batch)
        backward((chunk * flat_grad[micro.chunk_pairs(offset, offset + len(chunk))]).sum(),
                 i == len(micro.batches) - 1)
        pieces.append(chunk.detach())
        offset += len(chunk)
    return micro.in_pair_order(torch.cat(pieces))


def micro_batch_step(engine, micro: MicroBatch, loss_fn, backward, **loss_kwargs) -> MicroBatchResult:
    """Forward, loss and backward of one micro-batch.

    loss_fn(scores, teacher=micro.teacher, **loss_kwargs) -> scalar; backward(surrogate, last): the reduction
    scope's backward, `last` on the micro-batch's final call. A non-finite loss (on any rank) backpropagates nothing.
    """
    local, graph, states = forward(engine, micro)
    loss, scores, own = build_cache(micro, local, loss_fn, **loss_kwargs)
    finite = distributed.every_rank(bool(torch.isfinite(loss).all()))
    recomputed = None
    if finite and micro.chunked:
        recomputed = forward_backward_chunks(engine, micro, states, own, backward)
    elif finite:
        backward((graph * own).sum(), True)
    return MicroBatchResult(loss.detach(), scores.detach(), recomputed, finite)


class ReductionScope:
    """All backward passes of one optimizer step share one gradient reduction, then the engine steps.

    ZeRO 1-3: DeepSpeed's `coalesce_grad_reduction` keeps gradients local and reduces once on exit.
    Otherwise (ZeRO-0, optimizer wrappers): every backward but the last runs without reduction
    (`no_sync` where allowed) and the accumulation boundary is set explicitly, so no chunk's gradient
    is dropped or reduced twice.
    """

    def __init__(self, engine, micro_batches: int, on_reduced=None):
        self.engine, self.micro_batches, self.on_reduced = engine, micro_batches, on_reduced
        self.coalesce = (engine.zero_optimization_stage() in (1, 2, 3)
                         and hasattr(engine, "coalesce_grad_reduction")
                         and hasattr(engine.optimizer, "_coalesce_grad_reduction"))
        self._context = contextlib.ExitStack()
        self._micro_done = 0

    def __enter__(self):
        if self.coalesce:
            self._context.enter_context(self.engine.coalesce_grad_reduction())
        return self

    def backward(self, surrogate: torch.Tensor, last_of_micro_batch: bool) -> None:
        engine = self.engine
        last = last_of_micro_batch and self._micro_done == self.micro_batches - 1
        if last_of_micro_batch:
            self._micro_done += 1
        if self.coalesce:
            engine.backward(surrogate)
            return
        engine.set_gradient_accumulation_boundary(last)
        hold = not last and not engine.zero_optimization_partition_gradients()
        with engine.no_sync() if hold else contextlib.nullcontext():
            engine.backward(surrogate)

    def skip_micro_batch(self) -> None:
        """A micro-batch whose loss was not finite contributes no gradient; reduce if it was the last.

        DeepSpeed reduces only at an accumulation boundary, so the boundary is set before the reduction.
        """
        self._micro_done += 1
        if not self.coalesce and self._micro_done == self.micro_batches \
                and not self.engine.zero_optimization_partition_gradients():
            self.engine.set_gradient_accumulation_boundary(True)
            self.engine.allreduce_gradients()

    def __exit__(self, *exc):
        self._context.close()
        if exc[0] is None:
            if self.on_reduced is not None:
                self.on_reduced(self.engine)  # gradients are reduced, the weights not yet updated
            for i in range(self.micro_batches):
                self.engine.set_gradient_accumulation_boundary(i == self.micro_batches - 1)
                self.engine.step()
        self.engine.set_gradient_accumulation_boundary(None)
        return False
