"""Turn one micro-batch of sampled groups into this rank's padded pair batches for a step strategy."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.pairs import PairEncoder
from .steps import StepMode, chunk_bounds, local_passages


@dataclass
class EncodedMicroBatch:
    batches: list[dict]            # one batch (plain) or one per chunk (cached), query-major
    shape: tuple[int, int]         # (queries, width) of this rank's score matrix
    real: torch.Tensor             # (queries, width) 1.0 for real pairs, 0.0 for slice padding
    pairs: int                     # real pairs scored by this rank
    tokens: int                    # real tokens scored by this rank


def encode_micro_batch(groups: list[tuple], encoder: PairEncoder, mode: StepMode, rank: int, world: int,
                       text: bool) -> EncodedMicroBatch:
    """groups: [(query, [passage, ...])] with the positive first; bodies are token ids, or text when `text`."""
    rows = [(query, *local_passages(passages, rank, world, mode.collaborative)) for query, passages in groups]
    width = len(rows[0][1])
    if text:
        queries = encoder.token_ids([q for q, _, _ in rows])
        passages = encoder.token_ids([p for _, ps, _ in rows for p in ps])
        rows = [(queries[i], passages[i * width:(i + 1) * width], real) for i, (_, _, real) in enumerate(rows)]
    pairs, real = [], torch.zeros(len(rows), width)
    for i, (query, passages, count) in enumerate(rows):
        pairs.extend(encoder.encode_ids(query, passage) for passage in passages)
        real[i, :count] = 1.0
    bounds = chunk_bounds(len(pairs), mode.chunk_size) if mode.chunk_size else [(0, len(pairs))]
    batches = [encoder.collate(pairs[a:b]) for a, b in bounds]
    flat_real = real.reshape(-1).bool().tolist()
    tokens = sum(len(ids) for (ids, _), keep in zip(pairs, flat_real) if keep)
    return EncodedMicroBatch(batches, (len(rows), width), real, int(real.sum().item()), tokens)
