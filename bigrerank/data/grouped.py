"""Grouped training data (the original Reranker's or FlagEmbedding's layout) as memory-mapped Arrow, and group
sampling.

One JSON object a line, in either layout (line by line):
- the original Reranker's: {"qry": {"qid", "query"}, "pos": [{"pid", "passage"}], "neg": [{"pid", "passage"}]};
- FlagEmbedding's reranker data: {"query", "pos": [passage], "neg": [passage]} (other keys ignored); its
  queries get the id `<file name>:<line>` and its passages `pos<i>`/`neg<i>`.
Query and passage are token ids without special tokens, or text. Every line is validated while the file is
converted (once; cached by `datasets`), so a bad line is reported with its file and number.
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


def _query_holder(obj: dict) -> dict:
    """The object holding the query: `qry` in the Reranker's layout, the line itself in FlagEmbedding's."""
    return obj["qry"] if "qry" in obj else obj


def detect_format(files: list[Path]) -> str:
    """'ids' when the first record's query is a list of token ids, 'text' when it is a string."""
    for file in files:
        for number, obj in iter_jsonl(file):
            holder = _query_holder(obj)
            query = holder.get("query") if isinstance(holder, dict) else None
            if isinstance(query, list):
                return "ids"
            if isinstance(query, str):
                return "text"
            raise InputError(file, "expected a 'query' string or token-id list (in 'qry' for the Reranker's layout)",
                             number, "qry" if "qry" in obj else "query")
    raise InputError(files[0], "no training examples")


def features(fmt: str) -> Features:
    content = List(Value("int32")) if fmt == "ids" else Value("string")
    passage = {"pid": Value("string"), "passage": content}
    return Features({"qid": Value("string"), "query": content, "pos": List(passage), "neg": List(passage)})


def _content(path, number: int, obj: dict, field: str, fmt: str, vocab_size: int | None):
    """obj[field], a query/passage body in the file's format."""
    if field not in obj:
        raise InputError(path, "missing", number, field)
    return _body(path, number, obj[field], field, fmt, vocab_size)


def _body(path, number: int, value, field: str, fmt: str, vocab_size: int | None):
    """A query/passage body in the file's format: non-empty text, or token ids within the vocabulary."""
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


def _passages(path, number: int, obj: dict, field: str, fmt: str, vocab_size: int | None, bare: bool) -> list[dict]:
    """obj[field] as [{"pid", "passage"}]: objects in the Reranker's layout, bare bodies (`bare`) in FlagEmbedding's."""
    items = obj.get(field)
    if not isinstance(items, list):
        raise InputError(path, "missing or not a list", number, field)
    out = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if bare:
            out.append({"pid": f"{field}{i}", "passage": _body(path, number, item, where, fmt, vocab_size)})
            continue
        if not isinstance(item, dict):
            raise InputError(path, "expected an object with 'pid' and 'passage'", number, where)
        out.append({"pid": require_str(path, number, item, "pid"),
                    "passage": _content(path, number, item, "passage", fmt, vocab_size)})
    return out


def parse_record(path, number: int, obj: dict, fmt: str, vocab_size: int | None, need_negatives: bool) -> dict:
    if "qry" not in obj and "query" not in obj:
        raise InputError(path, "missing: expected 'qry' (the Reranker's layout) or 'query' (FlagEmbedding's)",
                         number, "qry")
    bare = "qry" not in obj  # FlagEmbedding's layout
    qry = _query_holder(obj)
    if not isinstance(qry, dict):
        raise InputError(path, "missing or not an object", number, "qry")
    qid = f"{Path(path).name}:{number}" if bare else require_str(path, number, qry, "qid")
    record = {"qid": qid,
              "query": _content(path, number, qry, "query", fmt, vocab_size),
              "pos": _passages(path, number, obj, "pos", fmt, vocab_size, bare),
              "neg": (_passages(path, number, obj, "neg", fmt, vocab_size, bare)
                      if "neg" in obj or need_negatives else [])}
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
