"""Who scores what: one `Shard` (rank, world, collaborative), made once and passed down.

Local: each rank takes its own queries of a micro-step and scores their whole groups. Collaborative: every rank
takes the same queries and scores a contiguous slice of each group; the slices' scores are all-gathered by global
rank, and each rank backpropagates only its own slice, its score gradient multiplied by the world size (DeepSpeed
averages the ranks' gradients), so the update equals training the whole group on one device. Uneven slices are
padded to the widest one with masked (zero-gradient) pairs so every rank runs the same number of forward passes
(ZeRO-3 needs it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist


def group_slice(group_size: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous [start, end) of a group scored by `rank`; the first group_size % world ranks get one more."""
    base, extra = divmod(group_size, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def chunk_bounds(total: int, size: int) -> list[tuple[int, int]]:
    """[start, end) of consecutive chunks of `size` items (the last may be shorter)."""
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def token_chunks(lengths: list[int], max_tokens: int, agree=lambda count: count) -> tuple[list[int], list[tuple]]:
    """(item order, [start, end) of its chunks): the items longest first, cut into chunks of at most `max_tokens`
    total length (an item over it alone). `agree(count)` gives the chunk count every rank must reach (the most
    any has): the chunks holding the most tokens are halved until there are that many."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bounds, start, total = [], 0, 0
    for end, i in enumerate(order):
        if end > start and total + lengths[i] > max_tokens:
            bounds.append((start, end))
            start, total = end, 0
        total += lengths[i]
    bounds.append((start, len(order)))
    for _ in range(agree(len(bounds)) - len(bounds)):
        a, b = max((bound for bound in bounds if bound[1] - bound[0] > 1),
                   key=lambda bound: sum(lengths[i] for i in order[bound[0]:bound[1]]))
        middle = (a + b) // 2
        bounds[bounds.index((a, b)):bounds.index((a, b)) + 1] = [(a, middle), (middle, b)]
    return order, bounds


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    collaborative: bool = False  # split each group across the data-parallel ranks

    @property
    def splits_groups(self) -> bool:
        return self.collaborative and self.world > 1

    def queries_per_micro_step(self, per_rank: int) -> int:
        """Queries all ranks take together in one micro-step."""
        return per_rank * (1 if self.collaborative else self.world)

    def queries(self, indices, per_rank: int):
        """This rank's queries of a micro-step's `indices`: all of them when collaborative, else its own."""
        return indices if self.collaborative else indices[self.rank * per_rank:(self.rank + 1) * per_rank]

    def passages(self, passages: list) -> tuple[list, int]:
        """This rank's passages of one group, padded to the widest slice; returns (passages, real count)."""
        if not self.collaborative:
            return passages, len(passages)
        start, end = group_slice(len(passages), self.rank, self.world)
        width = math.ceil(len(passages) / self.world)
        mine = passages[start:end]
        return mine + [passages[0]] * (width - len(mine)), len(mine)

    def gather(self, local: torch.Tensor, group_size: int) -> torch.Tensor:
        """The (queries, group) score matrix from this rank's (queries, width) slice, all-gathered by global rank."""
        if not self.splits_groups:
            return local
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local.contiguous())
        widths = [end - start for start, end in (group_slice(group_size, r, self.world) for r in range(self.world))]
        return torch.cat([part[:, :w] for part, w in zip(parts, widths)], dim=1)

    def own_gradient(self, score_grad: torch.Tensor, width: int) -> torch.Tensor:
        """This rank's (queries, width) share of the (queries, group) score gradient, scaled by the world size."""
        if not self.splits_groups:
            return score_grad
        start, end = group_slice(score_grad.shape[1], self.rank, self.world)
        own = torch.zeros(score_grad.shape[0], width, dtype=score_grad.dtype, device=score_grad.device)
        own[:, :end - start] = score_grad[:, start:end] * self.world
        return own
