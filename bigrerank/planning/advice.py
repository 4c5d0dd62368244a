"""The cheapest change that makes a plan fit, and the largest group that fits as given.

Changes are tried in order of what they cost: a gradient-cache chunk (a replayed forward), gradient
checkpointing (a recomputed forward), a higher ZeRO stage (more communication), optimizer/parameter offload
(host traffic), then LoRA (a different model). Each is tried alone first, then on top of the earlier ones.
A change is a dict of training flags {name: value}; `plan(changes)` is the planner's verdict for it.
"""
from __future__ import annotations

from typing import Callable

LORA_RANK = 16


def _chunk_sizes(alive: int, current: int) -> list[int]:
    """Gradient-cache chunk sizes below what is alive now, largest (fastest) first."""
    limit = min(alive, current) if current else alive
    sizes, k = [], 1
    while k < limit:
        sizes.append(k)
        k *= 2
    return sizes[::-1]


def candidate_moves(settings: dict, alive: int) -> list[list[dict]]:
    """Per move, in order, its variants (each a flag change), best first."""
    moves = [[{"grad_cache_chunk_size": k} for k in _chunk_sizes(alive, settings["grad_cache_chunk_size"])]]
    if not settings["gradient_checkpointing"]:
        moves.append([{"gradient_checkpointing": True}])
    stage, offload = settings["zero_stage"], settings["offload"]
    moves.append([{"ds_config": ("zero", s, offload)} for s in (2, 3) if s > stage])
    if not offload:
        moves.append([{"ds_config": ("zero", max(stage, 2), True)}])
    if settings["lora_r"] == 0:
        moves.append([{"lora_r": LORA_RANK}])
    return [variants for variants in moves if variants]


def cheapest_fit(plan: Callable[[dict], object], settings: dict, alive: int) -> dict | None:
    """The first flag change (in cost order) whose plan fits, or None when even all of them do not."""
    kept: dict = {}
    for variants in candidate_moves(settings, alive):
        for variant in variants:
            for changes in (variant, {**kept, **variant}):
                if plan(changes).fits:
                    return changes
        kept.update(max(variants, key=lambda v: plan({**kept, **v}).margin))
    return None


def largest_group(plan: Callable[[dict], object], limit: int = 1 << 16) -> int:
    """The largest --train_group_size that fits with everything else as given (0 when none does)."""
    if not plan({"train_group_size": 1}).fits:
        return 0
    low, high = 1, 2
    while high <= limit and plan({"train_group_size": high}).fits:
        low, high = high, high * 2
    if high > limit:
        return limit
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if plan({"train_group_size": mid}).fits else (low, mid)
    return low
