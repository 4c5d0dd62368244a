"""Grouped training data (the original Reranker's or FlagEmbedding's layout) as memory-mapped Arrow, and group
sampling.

One JSON object a line, in either layout (line by line):
- the original Reranker's: {"qry": {"qid", "query"}, "pos": [{"pid", "passage"}], "neg": [{"pid", "passage"}]},
  each passage optionally with a teacher "score";
- FlagEmbedding's reranker data: {"query", "pos": [passage], "neg": [passage]}, optionally with teacher scores
  "pos_scores"/"neg_scores" (other keys ignored); its queries get the id `<file name>:<line>` and its passages
  `pos<i>`/`neg<i>`.
Query and passage are token ids without special tokens, or text; teacher scores (for `--loss distill`) are
numbers. Every line is validated while the file is converted (once; cached by `datasets`, keyed on the files'
content), so a bad line is reported with its file, number and element (`pos[0].passage`).
Each step a query gets 1 positive and group_size-1 negatives, drawn deterministically from
(seed, epoch, query index): identical on every rank and after a resume.
"""
from __future__ import annotations

import hashlib
import logging
import math
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
    passage = {"pid": Value("string"), "passage": content, "score": Value("float64")}
    return Features({"qid": Value("string"), "query": content, "pos": List(passage), "neg": List(passage)})


def _content(path, number: int, obj: dict, field: str, fmt: str, vocab_size: int | None, where: str | None = None):
    """obj[field], a query/passage body in the file's format; errors name it `where` (default: the field)."""
    where = where or field
    if field not in obj:
        raise InputError(path, "missing", number, where)
    return _body(path, number, obj[field], where, fmt, vocab_size)


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


def _score(path, number: int, value, field: str, required: bool) -> float | None:
    """A teacher score: a finite number, or None when absent (an error when `required`)."""
    if value is None:
        if required:
            raise InputError(path, "missing (--loss distill needs a teacher score for every passage)", number, field)
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(path, f"expected a finite number (a teacher score), got {value!r}", number, field)
    return float(value)


def _bare_scores(path, number: int, obj: dict, field: str, count: int, required: bool) -> list:
    """FlagEmbedding's `<field>_scores`: one teacher score per passage, or None each when absent."""
    name = f"{field}_scores"
    scores = obj.get(name)
    if scores is None:
        return [_score(path, number, None, name, required) for _ in range(count)]
    if not isinstance(scores, list) or len(scores) != count:
        raise InputError(path, f"expected a list of {count} teacher scores, one per '{field}' passage", number, name)
    return [_score(path, number, value, f"{name}[{i}]", required) for i, value in enumerate(scores)]


def _passages(path, number: int, obj: dict, field: str, fmt: str, vocab_size: int | None, bare: bool,
              need_scores: bool) -> list[dict]:
    """obj[field] as [{"pid", "passage", "score"}]: objects in the Reranker's layout, bare bodies (`bare`) in
    FlagEmbedding's."""
    items = obj.get(field)
    if not isinstance(items, list):
        raise InputError(path, "missing or not a list", number, field)
    if bare:
        scores = _bare_scores(path, number, obj, field, len(items), need_scores)
        return [{"pid": f"{field}{i}", "passage": _body(path, number, item, f"{field}[{i}]", fmt, vocab_size),
                 "score": score} for i, (item, score) in enumerate(zip(items, scores))]
    out = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise InputError(path, "expected an object with 'pid' and 'passage'", number, where)
        out.append({"pid": require_str(path, number, item, "pid", where=f"{where}.pid"),
                    "passage": _content(path, number, item, "passage", fmt, vocab_size, f"{where}.passage"),
                    "score": _score(path, number, item.get("score"), f"{where}.score", need_scores)})
    return out


def parse_record(path, number: int, obj: dict, fmt: str, vocab_size: int | None, need_negatives: bool,
                 need_scores: bool = False) -> dict:
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
              "pos": _passages(path, number, obj, "pos", fmt, vocab_size, bare, need_scores),
              "neg": (_passages(path, number, obj, "neg", fmt, vocab_size, bare, need_scores)
                      if "neg" in obj or need_negatives else [])}
    if not record["pos"]:
        raise InputError(path, "no positive passage", number, "pos")
    if need_negatives and not record["neg"]:
        raise InputError(path, "no negative passages (train_group_size > 1 needs at least one)", number, "neg")
    return record


def content_digest(path: Path) -> str:
    """BLAKE2b of a file's bytes: the cache key of its conversion (size and mtime survive `cp -p` and `rsync -t`)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


def _records(files: list[str], digests: list[str], fmt: str, vocab_size: int | None, need_negatives: bool,
             need_scores: bool):
    del digests  # only part of the cache fingerprint: a file whose content changed is converted again
    for file in files:
        for number, obj in iter_jsonl(file):
            yield parse_record(file, number, obj, fmt, vocab_size, need_negatives, need_scores)


def load_groups(path, vocab_size: int | None = None, group_size: int = 8, cache_dir: str | None = None,
                need_scores: bool = False) -> Dataset:
    """Validate and convert the training data once into a memory-mapped Arrow dataset (cached by `datasets`).

    `need_scores`: every passage must carry a teacher score (for `--loss distill`)."""
    files = data_files(path)
    fmt = detect_format(files)
    digests = [content_digest(f) for f in files]
    try:
        dataset = Dataset.from_generator(
            _records, features=features(fmt), cache_dir=cache_dir,
            gen_kwargs={"files": [str(f.resolve()) for f in files], "digests": digests, "fmt": fmt,
                        "vocab_size": vocab_size, "need_negatives": group_size > 1, "need_scores": need_scores})
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
        query, passages, _ = self.scored_group(index, epoch)
        return query, passages

    def scored_group(self, index: int, epoch: int) -> tuple:
        """`group(index, epoch)` and its passages' teacher scores in the same order (None where the data has none):
        (query, [passage] * group_size, [score] * group_size), from one draw."""
        row = self.dataset[int(index)]
        rng = np.random.default_rng([self.seed, epoch, int(index)])
        positive = row["pos"][rng.integers(len(row["pos"]))]
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
        drawn = [positive, *(negatives[int(i)] for i in chosen)]
        return row["query"], [p["passage"] for p in drawn], [p["score"] for p in drawn]
