"""Candidate pairs to score, from one of two sources, read into one list, and their encoding.

(a) pairs: JSON lines `{"qid", "pid", "qry", "psg"}` (the original Reranker's inference format), `qry`/`psg`
    either token ids without special tokens or text, optionally with its `qid<TAB>pid` ids file;
(b) a first-stage run (TREC, MS MARCO or score tsv) plus queries and corpus (BEIR jsonl or tsv): each query's
    top `depth` documents.

`CandidateSource` is the one declaration of that input: `bigrerank rerank` (--input, --run …) and evaluation while
training (--eval_path, --eval_run …) map their flags onto it, and it checks and reads them the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .collection import (first_row, iter_jsonl, iter_lines, passage_text, read_corpus, read_queries,
                         read_run_announced, require_str, require_token_ids)

Content = str | list[int]  # text, or token ids without special tokens


@dataclass(frozen=True, slots=True)
class Candidate:
    """One (query, passage) pair to score."""

    qid: str
    pid: str
    query: Content
    passage: Content


FIELDS = ("pairs", "ids", "run", "queries", "corpus", "depth", "run_format")


@dataclass(frozen=True)
class CandidateSource:
    """Where candidates come from: `pairs` (+ `ids`), or `run` + `queries` + `corpus` (+ `depth`, `run_format`).

    `flags` spells each field as the command takes it ({"pairs": "--input", …}), for its messages.
    """

    pairs: str | None = None
    ids: str | None = None
    run: str | None = None
    queries: str | None = None
    corpus: str | None = None
    depth: int | None = None
    run_format: str = "auto"
    flags: dict = field(default_factory=lambda: {name: f"--{name}" for name in FIELDS}, compare=False)

    @property
    def given(self) -> bool:
        return self.pairs is not None or self.run is not None

    def problem(self, required: bool) -> str | None:
        """What is wrong with the combination of fields given (None: nothing); `required`: a source must be given."""
        f = self.flags
        if self.pairs is not None and self.run is not None:
            return f"give {f['pairs']} or {f['run']}, not both"
        if required and not self.given:
            return (f"give exactly one input: {f['pairs']} PAIRS.jsonl, or {f['run']} RUN {f['queries']} Q "
                    f"{f['corpus']} C")
        if self.ids is not None and self.pairs is None:
            return f"{f['ids']} goes with {f['pairs']}"
        if self.run is None and (any(v is not None for v in (self.queries, self.corpus, self.depth))
                                 or self.run_format != "auto"):
            return f"{f['queries']}, {f['corpus']}, {f['depth']} and {f['run_format']} go with {f['run']}"
        if self.run is not None and (self.queries is None or self.corpus is None):
            return f"{f['run']} needs {f['queries']} and {f['corpus']}"
        if self.depth is not None and self.depth < 1:
            return f"{f['depth']} must be at least 1, got {self.depth}"
        return None

    def paths(self) -> list[str]:
        """The files given."""
        return [path for path in (self.pairs, self.ids, self.run, self.queries, self.corpus) if path is not None]

    def check_files(self) -> None:
        """InputError naming the flag of the first file given that does not exist."""
        for name in ("pairs", "ids", "run", "queries", "corpus"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise InputError(path, f"{self.flags[name]}: no such file")

    def read(self, vocab_size: int) -> list[Candidate]:
        """The candidates (pairs grouped by query); a missing file is an InputError naming its flag."""
        self.check_files()
        if self.pairs is not None:
            return read_pair_candidates(self.pairs, vocab_size, self.ids, self.flags["ids"])
        return read_run_candidates(self.run, self.queries, self.corpus, self.depth, self.run_format,
                                   self.flags["run_format"])


def group_by_query(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates grouped by query (queries in first-appearance order), input order kept within a query."""
    groups: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        groups.setdefault(candidate.qid, []).append(candidate)
    return [c for group in groups.values() for c in group]


def _content(path, number: int, obj: dict, field: str, vocab_size: int) -> Content:
    """obj[field] as text or as a list of in-vocabulary token ids."""
    value = obj.get(field)
    if isinstance(value, list):
        return require_token_ids(path, number, value, field, vocab_size)
    if field in obj and not isinstance(value, str):
        raise InputError(path, f"expected text or a list of token ids, got {type(value).__name__}", number, field)
    return require_str(path, number, obj, field)


def _read_ids_file(path) -> list[tuple[int, str, str]]:
    rows = []
    for number, line in iter_lines(path):
        parts = line.split("\t")
        if len(parts) != 2 or len(line.split()) != 2:
            raise InputError(path, f"expected 'qid<TAB>pid' (2 columns, no spaces in ids), got {line!r}", number)
        rows.append((number, parts[0].strip(), parts[1].strip()))
    if not rows:
        raise InputError(path, "empty ids file")
    return rows


def _plain_id(path, number: int, obj: dict, field: str) -> str:
    """An id fit for the tab-separated score file: a non-empty string without whitespace."""
    value = require_str(path, number, obj, field)
    if value != "".join(value.split()):
        raise InputError(path, f"ids must not contain whitespace, got {value!r}", number, field)
    return value


def _pair_ids(path, number: int, obj: dict, ids_row, ids_path, ids_flag: str) -> tuple[str, str]:
    """(qid, pid) of a JSON line, taken from the line and/or its ids-file row (given by `ids_flag`), which must
    agree."""
    if ids_row is None:
        hint = f" (or give the ids file with {ids_flag})"
        for field in ("qid", "pid"):
            if field not in obj:
                raise InputError(path, "missing" + hint, number, field)
        return _plain_id(path, number, obj, "qid"), _plain_id(path, number, obj, "pid")
    ids_number, qid, pid = ids_row
    for field, expected in (("qid", qid), ("pid", pid)):
        if field in obj and _plain_id(path, number, obj, field) != expected:
            raise InputError(ids_path, f"row ({qid}, {pid}) disagrees with {path}:{number} "
                                       f"({obj.get('qid')}, {obj.get('pid')})", ids_number)
    return qid, pid


def read_pair_candidates(path, vocab_size: int, ids_path=None, ids_flag: str = "--ids") -> list[Candidate]:
    """Form (a): JSON lines `{"qid", "pid", "qry", "psg"}`; with `ids_path` (the command's `ids_flag`), its rows
    must match line for line."""
    ids_rows = _read_ids_file(ids_path) if ids_path is not None else None
    candidates, seen, index = [], {}, 0
    for number, obj in iter_jsonl(path):
        if ids_rows is not None and index >= len(ids_rows):
            raise InputError(path, f"no matching row in ids file {ids_path} (it has {len(ids_rows)} rows)", number)
        qid, pid = _pair_ids(path, number, obj, ids_rows[index] if ids_rows else None, ids_path, ids_flag)
        if (qid, pid) in seen:
            raise InputError(path, f"duplicate pair (qid '{qid}', pid '{pid}'), first on line {seen[qid, pid]}", number)
        seen[qid, pid] = number
        candidates.append(Candidate(qid, pid, _content(path, number, obj, "qry", vocab_size),
                                    _content(path, number, obj, "psg", vocab_size)))
        index += 1
    if not candidates:
        raise InputError(path, "no pairs")
    if ids_rows is not None and index < len(ids_rows):
        raise InputError(ids_path, f"no matching JSON line in {path} (it has {index} pairs)", ids_rows[index][0])
    return group_by_query(candidates)


def read_run_candidates(run_path, queries_path, corpus_path, depth: int | None = None,
                        run_format: str = "auto", format_flag: str = "--run_format") -> list[Candidate]:
    """Form (b): each run query's top `depth` documents (all when None), texts from the queries and corpus files;
    `format_flag` is the calling command's flag for `run_format`, named when the run's format is ambiguous."""
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    run = read_run_announced(run_path, run_format, format_flag)
    queries, corpus = read_queries(queries_path), read_corpus(corpus_path)
    candidates = []
    for qid, ranked in run.items():
        if qid not in queries:
            raise InputError(run_path, f"query id '{qid}' is not in {queries_path}", first_row(run_path, qid))
        for pid, _ in ranked[:depth]:
            if pid not in corpus:
                raise InputError(run_path, f"document id '{pid}' is not in {corpus_path}",
                                 first_row(run_path, qid, pid))
            candidates.append(Candidate(qid, pid, queries[qid], passage_text(*corpus[pid])))
    return candidates


def encode_candidates(encoder, candidates: list[Candidate]) -> list[tuple[list[int], list[int]]]:
    """Model inputs (input_ids, token_type_ids) of each candidate; every distinct text is tokenized once."""
    texts = list({c: None for cand in candidates for c in (cand.query, cand.passage) if isinstance(c, str)})
    token_ids = dict(zip(texts, encoder.token_ids(texts))) if texts else {}

    def ids(content: Content) -> list[int]:
        return token_ids[content] if isinstance(content, str) else content

    return [encoder.encode_ids(ids(c.query), ids(c.passage)) for c in candidates]

