"""Micro-batches: the next one drawn, sharded and encoded, with its teacher scores (nanoGPT's `get_batch`)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch

from .. import distributed
from ..data.grouped import GroupSampler
from ..data.pairs import PairEncoder
from .shard import Shard, chunk_bounds, token_chunks


@dataclass
class MicroBatch:
    batches: list[dict]            # one batch (plain) or one per chunk (cached), query-major
    shape: tuple[int, int]         # (queries, width) of this rank's score matrix
    real_mask: torch.Tensor        # (queries, width) 1.0 for real pairs, 0.0 for slice padding
    group_size: int                # passages per query, over all ranks
    chunked: bool = False          # gradient cache: score the chunks without grad, then recompute each
    shard: Shard = Shard()
    teacher: torch.Tensor | None = None  # (queries, group) teacher scores, for a loss that reads them
    pairs: int = 0                 # real pairs scored by this rank
    tokens: int = 0                # real tokens scored by this rank
    order: torch.Tensor | None = None  # the query-major pair index of each chunk position (None: in order)

    def to(self, device) -> MicroBatch:
        return replace(self, batches=[{k: v.to(device) for k, v in b.items()} for b in self.batches],
                       real_mask=self.real_mask.to(device),
                       teacher=None if self.teacher is None else self.teacher.to(device),
                       order=None if self.order is None else self.order.to(device))

    def in_pair_order(self, flat: torch.Tensor) -> torch.Tensor:
        """(queries, width) scores from the chunks' concatenated (pairs,) scores."""
        if self.order is None:
            return flat.view(self.shape)
        return torch.empty_like(flat).index_copy_(0, self.order, flat).view(self.shape)

    def chunk_pairs(self, start: int, end: int) -> slice | torch.Tensor:
        """The query-major indices of the pairs at chunk positions [start, end)."""
        return slice(start, end) if self.order is None else self.order[start:end]


@dataclass
class EncodedGroups:
    """A micro-batch's groups drawn and tokenized, not yet chunked or collated: what the data worker prepares
    (training/prefetch.py) without any collective or device work."""

    pairs: list[tuple[list[int], list[int]]]  # (input ids, token type ids) of each pair, query-major
    real_mask: torch.Tensor        # (queries, width) 1.0 for real pairs, 0.0 for slice padding
    group_size: int                # passages per query, over all ranks
    tokens: int                    # real tokens
    teacher: torch.Tensor | None = None


def encode_groups(groups: list[tuple], encoder: PairEncoder, shard: Shard, text: bool,
                  teacher: torch.Tensor | None = None) -> EncodedGroups:
    """groups: [(query, [passage, ...])] with the positive first; bodies are token ids, or text when `text`."""
    rows = [(query, *shard.passages(passages)) for query, passages in groups]
    width = len(rows[0][1])
    if text:
        queries = encoder.token_ids([q for q, _, _ in rows])
        passages = encoder.token_ids([p for _, ps, _ in rows for p in ps])
        rows = [(queries[i], passages[i * width:(i + 1) * width], count) for i, (_, _, count) in enumerate(rows)]
    pairs, real_mask = [], torch.zeros(len(rows), width)
    for i, (query, passages, count) in enumerate(rows):
        pairs.extend(encoder.encode_ids(query, passage) for passage in passages)
        real_mask[i, :count] = 1.0
    is_real = real_mask.reshape(-1).bool().tolist()
    tokens = sum(len(ids) for (ids, _), keep in zip(pairs, is_real) if keep)
    return EncodedGroups(pairs, real_mask, len(groups[0][1]), tokens, teacher)


def assemble(encoded: EncodedGroups, encoder: PairEncoder, shard: Shard, chunk_size: int,
             max_tokens: int = 0) -> MicroBatch:
    """Chunk and collate: chunk_size pairs per chunk for the gradient cache (0: one batch, plain); max_tokens:
    instead, chunks of at most this many tokens, the pairs grouped by length (as many chunks on every rank, which
    ZeRO-3 needs: a collective, so this runs on the training thread)."""
    pairs, order = encoded.pairs, None
    if max_tokens:
        order, bounds = token_chunks([len(ids) for ids, _ in pairs], max_tokens, _chunks_on_every_rank)
        pairs = [pairs[i] for i in order]
    else:
        bounds = chunk_bounds(len(pairs), chunk_size) if chunk_size else [(0, len(pairs))]
    real_mask = encoded.real_mask
    return MicroBatch([encoder.collate(pairs[a:b]) for a, b in bounds], tuple(real_mask.shape), real_mask,
                      encoded.group_size, chunked=bool(chunk_size or max_tokens), shard=shard,
                      teacher=encoded.teacher, pairs=int(real_mask.sum().item()), tokens=encoded.tokens,
                      order=None if order is None else torch.tensor(order))


def encode_micro_batch(groups: list[tuple], encoder: PairEncoder, shard: Shard, chunk_size: int, text: bool,
                       teacher: torch.Tensor | None = None, max_tokens: int = 0) -> MicroBatch:
    """`encode_groups` then `assemble`, in one call."""
    return assemble(encode_groups(groups, encoder, shard, text, teacher), encoder, shard, chunk_size, max_tokens)


def _chunks_on_every_rank(count: int) -> int:
    return int(distributed.all_reduce([count], "max")[0])


@dataclass
class MicroBatchSource:
    """Where this rank's micro-batches come from: the sampler's epoch order, its shard, the pair encoder."""

    sampler: GroupSampler
    encoder: PairEncoder
    shard: Shard
    queries_per_rank: int          # --per_device_train_batch_size
    chunk_size: int                # --grad_cache_chunk_size (0: plain)
    text: bool                     # the data holds text (else token ids)
    with_teacher: bool             # the loss reads the teacher's scores
    device: torch.device
    max_tokens: int = 0            # --grad_cache_max_tokens (0: chunks of chunk_size pairs)
    _order: tuple = field(default=(None, None), repr=False)  # (epoch, its query order)

    def epoch_order(self, epoch: int):
        if self._order[0] != epoch:
            self._order = (epoch, self.sampler.epoch_order(epoch))
        return self._order[1]


def micro_positions(step: int, total_steps: int, accum: int, steps_per_epoch: int) -> Iterator[tuple[int, int]]:
    """(epoch, micro-step index) of every micro-batch from optimizer step `step` to the end, in training order."""
    for current in range(step, total_steps):
        epoch, first = divmod(current * accum, steps_per_epoch * accum)
        yield from ((epoch, index) for index in range(first, first + accum))


def draw_groups(source: MicroBatchSource, epoch: int, index: int) -> EncodedGroups:
    """Micro-step `index` of `epoch`: this rank's groups, drawn and tokenized (no collective, no device)."""
    per_step = source.shard.queries_per_micro_step(source.queries_per_rank)
    indices = source.epoch_order(epoch)[index * per_step:(index + 1) * per_step]
    drawn = [source.sampler.scored_group(i, epoch) for i in source.shard.queries(indices, source.queries_per_rank)]
    teacher = torch.tensor([scores for _, _, scores in drawn]) if source.with_teacher else None
    groups = [(query, passages) for query, passages, _ in drawn]
    return encode_groups(groups, source.encoder, source.shard, source.text, teacher)


def micro_batch(source: MicroBatchSource, encoded: EncodedGroups) -> MicroBatch:
    """The drawn groups chunked, collated and on the engine's device."""
    return assemble(encoded, source.encoder, source.shard, source.chunk_size, source.max_tokens).to(source.device)
