"""Training step strategies: plain or cached (gradient cache) x local or collaborative, one code path.

Every micro-batch goes through the same four moves (GradCache's functional core, Gao et al. 2021):

1. score this rank's pairs — plain: one forward with autograd; cached: no-grad chunks of K pairs,
   saving the RNG state before each chunk;
2. assemble the (queries, group) score matrix — local: this rank's own groups; collaborative: each
   rank holds a contiguous slice of every group, and the slices are all-gathered by global rank;
3. take the loss and its gradient with respect to the scores, once;
4. backpropagate that score gradient — plain: through the kept graph; cached: chunk by chunk,
   recomputed with the same RNG state, so dropout draws the same masks.

Collaborative compensation: each rank backpropagates only its own slice, and DeepSpeed averages the
ranks' gradients, so the slice's score gradient is multiplied by the world size; the update then
equals training the whole group on one device. Uneven slices are padded to the widest one with
masked (zero-gradient) pairs so every rank runs the same number of forward passes (ZeRO-3 needs it).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..model import pair_scores
from . import distributed


@dataclass(frozen=True)
class StepMode:
    chunk_size: int = 0          # 0 = plain; K > 0 = gradient cache with chunks of K pairs
    collaborative: bool = False  # split each group across the data-parallel ranks


@dataclass
class MicroBatchResult:
    loss: torch.Tensor              # the micro-batch loss (detached, same on every rank when collaborative)
    scores: torch.Tensor            # (queries, group) first-pass scores
    recomputed: torch.Tensor | None  # this rank's scores from the autograd pass (cached mode), (queries, width)
    finite: bool


def group_slice(group_size: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous [start, end) of a group scored by `rank`; the first group_size % world ranks get one more."""
    base, extra = divmod(group_size, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def local_passages(passages: list, rank: int, world: int, collaborative: bool) -> tuple[list, int]:
    """This rank's passages of one group, padded to the widest slice; returns (passages, real count)."""
    if not collaborative:
        return passages, len(passages)
    start, end = group_slice(len(passages), rank, world)
    width = math.ceil(len(passages) / world)
    mine = passages[start:end]
    return mine + [passages[0]] * (width - len(mine)), len(mine)


class RngState:
    """CPU (and current accelerator) RNG state, captured before a chunk and replayed for its recompute."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)

    def to_dict(self) -> dict:
        return {"cpu": self.cpu, **({"cuda": self.cuda} if self.cuda is not None else {})}

    @classmethod
    def from_dict(cls, state: dict) -> "RngState":
        rng = cls.__new__(cls)
        rng.cpu = state["cpu"]
        rng.cuda = state.get("cuda") if torch.cuda.is_available() else None
        return rng


def chunk_bounds(total: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _gather_slices(local: torch.Tensor, group_size: int, world: int) -> torch.Tensor:
    """All-gather (queries, width) slices by global rank into the (queries, group) matrix, dropping padding."""
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local.contiguous())
    widths = [end - start for start, end in (group_slice(group_size, r, world) for r in range(world))]
    return torch.cat([part[:, :w] for part, w in zip(parts, widths)], dim=1)


def micro_batch_step(engine, batches: list[dict], shape: tuple[int, int], group_size: int, real_width: torch.Tensor,
                     loss_fn, mode: StepMode, backward) -> MicroBatchResult:
    """Forward, loss and backward of one micro-batch.

    batches: this rank's padded pair batches (one for plain, one per chunk for cached), query-major;
    shape: (queries, width) of this rank's score matrix; real_width: (queries, width) mask of real pairs;
    backward(surrogate, last): the reduction scope's backward, `last` on the micro-batch's final call.
    """
    world = dist.get_world_size() if (mode.collaborative and dist.is_initialized()) else 1
    rank = dist.get_rank() if world > 1 else 0
    states, live = [], None
    if mode.chunk_size:
        with torch.no_grad():
            chunks = []
            for batch in batches:
                states.append(RngState())
                chunks.append(pair_scores(engine, batch))
        local = torch.cat(chunks).view(shape)
    else:
        live = pair_scores(engine, batches[0]).view(shape)
        local = live.detach()

    scores = _gather_slices(local, group_size, world) if world > 1 else local
    leaf = scores.detach().requires_grad_(True)
    loss = loss_fn(leaf)
    (score_grad,) = torch.autograd.grad(loss, leaf)
    finite = distributed.every_rank(bool(torch.isfinite(loss).all()))
    if world > 1:
        start, end = group_slice(group_size, rank, world)
        own = torch.zeros(shape, dtype=score_grad.dtype, device=score_grad.device)
        own[:, :end - start] = score_grad[:, start:end] * world
    else:
        own = score_grad
    own = own * real_width

    recomputed = None
    if not finite:
        pass  # the caller counts it; no gradient from a non-finite loss reaches the weights
    elif mode.chunk_size:
        flat_grad, pieces, offset = own.reshape(-1), [], 0
        for i, (batch, state) in enumerate(zip(batches, states)):
            state.restore()
            chunk = pair_scores(engine, batch)
            backward((chunk * flat_grad[offset:offset + len(chunk)]).sum(), i == len(batches) - 1)
            pieces.append(chunk.detach())
            offset += len(chunk)
        recomputed = torch.cat(pieces).view(shape)
    else:
        backward((live * own).sum(), True)
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
