"""Grouped training data (the original Reranker's format) as memory-mapped Arrow, and group sampling.

One JSON object a line: {"qry": {"qid", "query"}, "pos": [{"pid", "passage"}], "neg": [{"pid", "passage"}]},
where query and passage are token ids without special tokens, or text. Every line is validated while
the file is converted (once; cached by `datasets`), so a bad line is reported with its file and number.
Each step a query gets 1 positive and group_size-1 negatives, drawn deterministically from
(seed, epoch, query index): identical on every rank and after a resume.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, List, Value
from datasets.exceptions import DatasetGenerationError

from ..errors import InputError
from .collection import iter_jsonl, require_str, require_token_ids

log = logging.getLogger(__name__)


def data_files(path) -> list[Path]:
    """The .jsonl files of a training path: the file itself, or a directory's *.jsonl sorted by name."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl")) + sorted(path.glob("*.json"))
        if not files:
            raise InputError(path, "directory holds no .jsonl files (--train_path)")
        return files
    if not path.is_file():
        raise InputError(path, "training data not found (--train_path)")
    return [path]


def detect_format(files: list[Path]) -> str:
    """'ids' when the first record's query is a list of token ids, 'text' when it is a string."""
    for file in files:
        for number, obj in iter_jsonl(file):
            qry = obj.get("qry")
            query = qry.get("query") if isinstance(qry, dict) else None
            if isinstance(query, list):
                return "ids"
            if isinstance(query, str):
                return "text"
            raise InputError(file, "expected an object with a 'query' string or token-id list", number, "qry")
    raise InputError(files[0], "no training examples")


def features(fmt: str) -> Features:
    content = List(Value("int32")) if fmt == "ids" else Value("string")
    passage = {"pid": Value("string"), "passage": content}
    return Features({"qid": Value("string"), "query": content, "pos": List(passage), "neg": List(passage)})


def _content(path, number: int, obj: dict, field: str, fmt: str, vocab_size: int | None):
    """A query/passage body in the file's format: non-empty text, or token ids within the vocabulary."""
    if field not in obj:
        raise InputError(path, "missing", number, field)
    value = obj[field]
    if fmt == "text":
        if not isinstance(value, str):
            raise InputError(path, f"expected text like the file's first line, got {type(value).__name__}", number, field)
        if not value.strip():
            raise InputError(path, "empty", number, field)
        return value
    if not isinstance(value, list):
        raise InputError(path, f"expected a list of token ids like the file's first line, got {type(value).__name__}",
                         number, field)
    return require_token_ids(path, number, value, field, vocab_size)


def _passages(path, number: int, obj: dict, field: str, fmt: str, vocab_size: int | None) -> list[dict]:
    items = obj.get(field)
    if not isinstance(items, list):
        raise InputError(path, "missing or not a list", number, field)
    out = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise InputError(path, "expected an object with 'pid' and 'passage'", number, where)
        out.append({"pid": require_str(path, number, item, "pid"),
                    "passage": _content(path, number, item, "passage", fmt, vocab_size)})
    return out


def parse_record(path, number: int, obj: dict, fmt: str, vocab_size: int | None, need_negatives: bool) -> dict:
    qry = obj.get("qry")
    if not isinstance(qry, dict):
        raise InputError(path, "missing or not an object", number, "qry")
    record = {"qid": require_str(path, number, qry, "qid"),
              "query": _content(path, number, qry, "query", fmt, vocab_size),
              "pos": _passages(path, number, obj, "pos", fmt, vocab_size),
              "neg": _passages(path, number, obj, "neg", fmt, vocab_size) if "neg" in obj or need_negatives else []}
    if not record["pos"]:
        raise InputError(path, "no positive passage", number, "pos")
    if need_negatives and not record["neg"]:
        raise InputError(path, "no negative passages (train_group_size > 1 needs at least one)", number, "neg")
    return record


def _records(files: list[str], stamps: list, fmt: str, vocab_size: int | None, need_negatives: bool):
    del stamps  # only part of the cache fingerprint: a changed file is converted again
    for file in files:
        for number, obj in iter_jsonl(file):
            yield parse_record(file, number, obj, fmt, vocab_size, need_negatives)


def load_groups(path, vocab_size: int | None = None, group_size: int = 8, cache_dir: str | None = None) -> Dataset:
    """Validate and convert the training data once into a memory-mapped Arrow dataset (cached by `datasets`)."""
    files = data_files(path)
    fmt = detect_format(files)
    stamps = [(f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    try:
        dataset = Dataset.from_generator(
            _records, features=features(fmt), cache_dir=cache_dir,
            gen_kwargs={"files": [str(f.resolve()) for f in files], "stamps": stamps, "fmt": fmt,
                        "vocab_size": vocab_size, "need_negatives": group_size > 1})
    except DatasetGenerationError as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, InputError):
            raise cause from None
        raise
    if len(dataset) == 0:
        raise InputError(files[0], "no training examples")
    return dataset


def is_text(dataset: Dataset) -> bool:
    """True when the dataset holds text (tokenized at batch time), False for token ids."""
    return isinstance(dataset.features["query"], Value)


class GroupSampler:
    """Deterministic query order per epoch and group draws per (seed, epoch, query index)."""

    def __init__(self, dataset: Dataset, group_size: int, seed: int):
        self.dataset, self.group_size, self.seed = dataset, group_size, seed
        self._said_replacement = False  # read lazily: opening the data must not touch every record

    def __len__(self) -> int:
        return len(self.dataset)

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def group(self, index: int, epoch: int) -> tuple:
        """(query, [passage] * group_size) with the positive first; query/passages are ids or text."""
        row = self.dataset[int(index)]
        rng = np.random.default_rng([self.seed, epoch, int(index)])
        positive = row["pos"][rng.integers(len(row["pos"]))]["passage"]
        wanted, negatives = self.group_size - 1, row["neg"]
        if wanted == 0:
            chosen = []
        elif len(negatives) >= wanted:
            chosen = rng.choice(len(negatives), size=wanted, replace=False)
        else:
            chosen = rng.choice(len(negatives), size=wanted, replace=True)
            if not self._said_replacement:
                self._said_replacement = True
                log.warning("query %s has %d negatives, fewer than the %d a group needs: negatives of such queries "
                            "are sampled with replacement (said once)", row["qid"], len(negatives), wanted)
        return row["query"], [positive, *(negatives[int(i)]["passage"] for i in chosen)]
