"""Scoring many pairs in length-sorted batches, split over the data-parallel ranks: evaluation while training (the
live engine) and `bigrerank rerank` (a RerankerForInference per rank) both score this way.

Rank r of `world` takes pairs r, r + world, …; it encodes them chunk by chunk (the next chunk in a worker thread
meanwhile, when asked) and scores each chunk in batches of similar length, longest first (an out-of-memory shows
up at once). Every rank runs the same number of forward passes, which ZeRO-3 needs (each forward gathers the
partitioned weights from every rank): a rank with fewer pairs repeats its last batch and drops the result. The
scores are gathered, in the pairs' order, to every rank or to rank 0.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.distributed as dist

Pair = tuple[list[int], list[int]]  # (input_ids, token_type_ids) of one encoded pair


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of similar length, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def encoded_chunks(encode: Callable[[Sequence], list[Pair]], items: Sequence, chunk_size: int,
                   ahead: bool) -> Iterator[list[Pair]]:
    """`encode(chunk)` of consecutive chunks of `items`, in order; with `ahead`, the next chunk is encoded in a
    worker thread meanwhile."""
    chunks = (items[start:start + chunk_size] for start in range(0, len(items), chunk_size))
    if not ahead:
        yield from map(encode, chunks)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
        pending = None
        for chunk in chunks:
            submitted = pool.submit(encode, chunk)
            if pending is not None:
                yield pending.result()
            pending = submitted
        if pending is not None:
            yield pending.result()


def forward_count(pairs: int, batch_size: int, chunk_size: int) -> int:
    """Forward passes that score `pairs` pairs chunk by chunk, each chunk in batches of at most `batch_size`."""
    full, rest = divmod(pairs, chunk_size)
    return full * math.ceil(chunk_size / batch_size) + math.ceil(rest / batch_size)


def score_sharded(score_batch: Callable[[list[Pair]], torch.Tensor], items: Sequence, batch_size: int, *,
                  encode: Callable[[Sequence], list[Pair]] = list, chunk_size: int | None = None,
                  ahead: bool = False, rank: int = 0, world: int = 1, to_all: bool = True,
                  on_batch: Callable[[int], object] | None = None) -> list[float] | None:
    """Scores of `items` in order (see the module docstring): this rank's share, `encode`d (default: the items are
    encoded pairs already) in chunks of `chunk_size` (None: one chunk), scored by `score_batch(pairs)` -> (pairs,)
    tensor. Gathered to every rank (`to_all`) or to rank 0, the others getting None. `on_batch(n)` follows each
    batch of n pairs."""
    own = items[rank::world]
    most = math.ceil(len(items) / world)  # rank 0's share, the largest
    chunk_size = chunk_size or max(most, 1)
    outputs, order, offset, last = [], [], 0, None
    for pairs in encoded_chunks(encode, own, chunk_size, ahead):
        for indices in length_sorted_batches([len(ids) for ids, _ in pairs], batch_size):
            last = [pairs[i] for i in indices]
            outputs.append(score_batch(last))
            order.extend(offset + i for i in indices)
            if on_batch is not None:
                on_batch(len(indices))
        offset += len(pairs)
    for _ in range(forward_count(most, batch_size, chunk_size) - len(outputs)):  # padding forwards
        score_batch(last if last is not None else encode(items[:1]))
    scores = [0.0] * len(own)
    for i, value in zip(order, torch.cat(outputs).tolist() if outputs else []):  # one device sync, at the end
        scores[i] = value
    return gather(scores, len(items), rank, world, to_all)


def gather(own: list[float], total: int, rank: int, world: int, to_all: bool) -> list[float] | None:
    """Every rank's scores (rank r's are items r, r + world, …) in item order: on every rank, or on rank 0."""
    if world == 1:
        return own
    shards = [None] * world if to_all or rank == 0 else None
    if to_all:
        dist.all_gather_object(shards, own)
    else:
        dist.gather_object(own, shards, dst=0)
        if rank != 0:
            return None
    scores = [0.0] * total
    for r, values in enumerate(shards):
        scores[r::world] = values
    return scores
