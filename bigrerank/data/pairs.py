"""(query, passage) pair encoding with the tokenizer's own pair template, and dynamic padding.

transformers 5 tokenizers no longer build special-token templates from ids, so the template is
read off the tokenizer once by encoding a probe pair and locating the two segments in it: the
special tokens before, between and after them and the token type of every position. That covers
BERT's `[CLS] q [SEP] p [SEP]`, RoBERTa's `<s> q </s></s> p </s>` and any other backbone.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import UsageError
from . import packing

_PROBE_QUERY, _PROBE_PASSAGE = "query", "passage"
MIN_QUERY_TOKENS = MIN_PASSAGE_TOKENS = 2  # the least of each a pair is worth scoring with


def smallest_max_len(num_special: int) -> int:
    """The smallest useful max_len for a template of `num_special` tokens: room for 2 query and 2 passage tokens."""
    return num_special + MIN_QUERY_TOKENS + MIN_PASSAGE_TOKENS


def room_problem(num_special: int, max_len: int, name: str = "max_len") -> str | None:
    """Why pairs of `max_len` tokens (the setting called `name`) hold no useful query and passage after a template of
    `num_special` tokens; None when they do."""
    smallest = smallest_max_len(num_special)
    if max_len >= smallest:
        return None
    return (f"{name} {max_len} leaves no room for a query and a passage; the template takes {num_special} tokens, "
            f"use {name} ≥ {smallest} (the template, {MIN_QUERY_TOKENS} query and {MIN_PASSAGE_TOKENS} passage "
            "tokens)")


def _find(haystack: list[int], needle: list[int], start: int = 0) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i:i + len(needle)] == needle:
            return i
    raise ValueError("probe segment not found in the tokenizer's pair encoding")


@dataclass(frozen=True)
class PairTemplate:
    """Special-token ids and token types around the query (A) and passage (B) segments."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    prefix_types: tuple[int, ...]
    middle_types: tuple[int, ...]
    suffix_types: tuple[int, ...]
    query_type: int
    passage_type: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "PairTemplate":
        q = tokenizer(_PROBE_QUERY, add_special_tokens=False)["input_ids"]
        p = tokenizer(_PROBE_PASSAGE, add_special_tokens=False)["input_ids"]
        enc = tokenizer(_PROBE_QUERY, _PROBE_PASSAGE, return_token_type_ids=True)
        ids, types = enc["input_ids"], enc.get("token_type_ids") or [0] * len(enc["input_ids"])
        qi = _find(ids, q)
        pi = _find(ids, p, qi + len(q))
        pe = pi + len(p)
        return cls(tuple(ids[:qi]), tuple(ids[qi + len(q):pi]), tuple(ids[pe:]),
                   tuple(types[:qi]), tuple(types[qi + len(q):pi]), tuple(types[pe:]),
                   types[qi], types[pi])

    @property
    def num_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def build(self, query: list[int], passage: list[int], max_len: int) -> tuple[list[int], list[int]]:
        """input_ids and token_type_ids of one pair, cut to `max_len` from the passage side first.

        The query is only cut when it alone would take more than half of the room left.
        """
        problem = room_problem(self.num_special, max_len)
        if problem:
            raise ValueError(problem)
        room = max_len - self.num_special
        keep_query = min(len(query), max(room - len(passage), room // 2))
        query, passage = query[:keep_query], passage[:room - keep_query]
        ids = [*self.prefix, *query, *self.middle, *passage, *self.suffix]
        types = [*self.prefix_types, *([self.query_type] * len(query)), *self.middle_types,
                 *([self.passage_type] * len(passage)), *self.suffix_types]
        return ids, types


class PairEncoder:
    """Turns (query, passage) pairs — text or token ids without special tokens — into batches: padded, or packed
    into rows of at most `pack_len` tokens when it is set (packing.py)."""

    pack_len: int | None = None

    def __init__(self, tokenizer, max_len: int, append_eos: bool = False):
        self.tokenizer, self.max_len = tokenizer, max_len
        self.template = PairTemplate.from_tokenizer(tokenizer)
        if append_eos and self.template.suffix[-1:] != (tokenizer.eos_token_id,):
            # a decoder's classifier reads the last token: the same EOS ends every pair
            self.template = replace(self.template, suffix=(*self.template.suffix, tokenizer.eos_token_id),
                                    suffix_types=(*self.template.suffix_types, self.template.passage_type))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.use_token_types = "token_type_ids" in tokenizer.model_input_names

    def require_room(self, flag: str = "--max_len") -> None:
        """UsageError naming `flag` when this encoder's max_len holds no useful pair after its template (checked
        before any process group or model load, where the encoder is built)."""
        problem = room_problem(self.template.num_special, self.max_len, flag)
        if problem:
            raise UsageError(problem)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens, cut to max_len (nothing longer can be used)."""
        out = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_len)
        return out["input_ids"]

    def encode_ids(self, query: list[int], passage: list[int]) -> tuple[list[int], list[int]]:
        return self.template.build(query, passage, self.max_len)

    def encode_texts(self, queries: list[str], passages: list[str]) -> list[tuple[list[int], list[int]]]:
        q_ids, p_ids = self.token_ids(queries), self.token_ids(passages)
        return [self.encode_ids(q, p) for q, p in zip(q_ids, p_ids)]

    def collate(self, pairs: list[tuple[list[int], list[int]]], pin_memory: bool = False) -> dict[str, torch.Tensor]:
        """The batch of `pairs`: packed when `pack_len` is set, else padded.

        `pin_memory` puts the tensors in page-locked memory, so a GPU copy can run asynchronously.
        """
        batch = (packing.pack(pairs, self.pack_len, self.pad_id, self.use_token_types) if self.pack_len
                 else self.pad(pairs))
        return {name: t.pin_memory() for name, t in batch.items()} if pin_memory else batch

    def pad(self, pairs: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        """Pad to the longest pair in the batch; returns input_ids, attention_mask (and token_type_ids)."""
        lengths = np.fromiter((len(ids) for ids, _ in pairs), dtype=np.int64, count=len(pairs))
        mask = np.arange(int(lengths.max())) < lengths[:, None]
        input_ids = np.full(mask.shape, self.pad_id, dtype=np.int64)
        input_ids[mask] = np.fromiter(itertools.chain.from_iterable(ids for ids, _ in pairs), dtype=np.int64,
                                      count=int(lengths.sum()))
        arrays = {"input_ids": input_ids, "attention_mask": mask.astype(np.int64)}
        if self.use_token_types:
            token_types = np.zeros(mask.shape, dtype=np.int64)
            token_types[mask] = np.fromiter(itertools.chain.from_iterable(types for _, types in pairs),
                                            dtype=np.int64, count=int(lengths.sum()))
            arrays["token_type_ids"] = token_types
        return {name: torch.from_numpy(array) for name, array in arrays.items()}
