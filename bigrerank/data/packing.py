"""Padding-free batches: encoded pairs packed first-fit-decreasing into rows of at most `pack_len` tokens.

A row holds several pairs back to back; each pair's position ids restart at 0, which is how the model's attention
keeps the pairs of a row apart (transformers builds the block-diagonal mask from them when no attention mask is
given). Rows are right-filled to the longest row with a tail of padding tokens whose positions also restart at 0:
a segment of its own, never read. `pair_starts` and `pair_lengths` say where each pair lies in the flattened rows,
in the order the pairs were given.
"""
from __future__ import annotations

import numpy as np
import torch

# The keys of a packed batch that locate the pairs; the others are the model's inputs.
LAYOUT_KEYS = ("pair_starts", "pair_lengths")
PACK_FACTOR = 1  # default row length: this many times the pair length limit (docs/training.md: measured)


def row_length(max_len: int, pack_len: int | None) -> int:
    """Tokens per packed row: `pack_len`, else PACK_FACTOR x `max_len`."""
    return pack_len or PACK_FACTOR * max_len


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` in rows of at most `capacity` total, longest first, each into the first row it fits
    (an item longer than `capacity` gets a row of its own)."""
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, free in enumerate(room) if lengths[i] <= free), None)
        if row is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[row].append(i)
            room[row] -= lengths[i]
    return rows


def pack(pairs: list[tuple[list[int], list[int]]], pack_len: int, pad_id: int,
         use_token_types: bool) -> dict[str, torch.Tensor]:
    """input_ids, position_ids (and token_type_ids) of the packed rows, and each pair's start and length."""
    lengths = [len(ids) for ids, _ in pairs]
    rows = first_fit_decreasing(lengths, pack_len)
    width = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    token_types = np.zeros((len(rows), width), dtype=np.int64)
    starts = np.zeros(len(pairs), dtype=np.int64)
    ramp = np.arange(width, dtype=np.int64)
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            ids, types = pairs[i]
            end = offset + len(ids)
            input_ids[r, offset:end] = ids
            token_types[r, offset:end] = types
            positions[r, offset:end] = ramp[:len(ids)]
            starts[i] = r * width + offset
            offset = end
        positions[r, offset:] = ramp[:width - offset]
    arrays = {"input_ids": input_ids, "position_ids": positions}
    if use_token_types:
        arrays["token_type_ids"] = token_types
    arrays.update(pair_starts=starts, pair_lengths=np.asarray(lengths, dtype=np.int64))
    return {name: torch.from_numpy(array) for name, array in arrays.items()}

