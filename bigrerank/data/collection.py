"""Readers for IR collections: corpus, queries, qrels and runs (BEIR, TREC and MS MARCO layouts).

Every reader validates as it goes and raises `InputError` naming the file, line and field.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Iterator

from ..errors import InputError

RUN_FORMATS = ("auto", "trec", "marco", "scores")
Run = dict[str, list[tuple[str, float]]]  # a ranked (TREC) run: {qid: [(doc id, score), …] best first}
log = logging.getLogger(__name__)


def iter_lines(path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without newline) for non-blank lines; strict UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise InputError(path, f"invalid UTF-8 ({e.reason} at byte {e.start})", number) from None
            if line.strip():
                yield number, line


def iter_jsonl(path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each JSON line; each line must hold one JSON object."""
    for number, line in iter_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(path, f"malformed JSON ({e.msg}, column {e.colno})", number) from None
        except (ValueError, RecursionError) as e:  # an integer over 4300 digits; nesting deeper than the stack
            raise InputError(path, f"unreadable JSON ({type(e).__name__}: {str(e)[:80]})", number) from None
        if not isinstance(obj, dict):
            raise InputError(path, f"expected a JSON object, got {type(obj).__name__}", number)
        yield number, obj


def require_str(path, number: int, obj: dict, field: str, allow_empty: bool = False, where: str | None = None) -> str:
    """obj[field] as a string (ints are accepted for ids), or an InputError naming the field (as `where`, e.g.
    "pos[0].pid", when given)."""
    where = where or field
    if field not in obj:
        raise InputError(path, "missing", number, where)
    value = obj[field]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InputError(path, f"expected a string, got {type(value).__name__}", number, where)
    if not allow_empty and not value.strip():
        raise InputError(path, "empty", number, where)
    return value


def require_token_ids(path, number: int, value: list, field: str, vocab_size: int | None) -> list[int]:
    """A non-empty list of token ids, each an integer in [0, vocab_size), or an InputError naming the field."""
    if not value:
        raise InputError(path, "empty token id list", number, field)
    for token in value:
        if not isinstance(token, int) or isinstance(token, bool) or token < 0:
            raise InputError(path, f"expected non-negative integer token ids, got {token!r}", number, field)
        if vocab_size is not None and token >= vocab_size:
            raise InputError(path, f"token id {token} outside the tokenizer's vocabulary [0, {vocab_size})",
                             number, field)
    return value


def _split_tsv(path, number: int, line: str, columns: tuple[int, ...]) -> list[str]:
    parts = line.split("\t")
    if len(parts) not in columns:
        expected = " or ".join(map(str, columns))
        raise InputError(path, f"expected {expected} tab-separated columns, got {len(parts)}", number)
    return parts


def _is_jsonl(path) -> bool:
    return Path(path).suffix in (".jsonl", ".json")


def _put_unique(table: dict, key: str, value, path, number: int, what: str) -> None:
    if key in table:
        raise InputError(path, f"duplicate {what} '{key}'", number)
    table[key] = value


def empty_documents(corpus: dict[str, tuple[str, str]]) -> set[str]:
    """Ids of documents with neither title nor text (Cranfield has two): nothing to train on."""
    return {doc_id for doc_id, (title, text) in corpus.items() if not (title.strip() or text.strip())}


def read_corpus(path) -> dict[str, tuple[str, str]]:
    """Corpus as {doc id: (title, text)}: BEIR `corpus.jsonl` (_id, title, text) or tsv `id<TAB>text[<TAB>title]`.

    Documents with neither title nor text are kept (a run may rank them) and counted in a warning.
    """
    corpus: dict[str, tuple[str, str]] = {}
    if _is_jsonl(path):
        for number, obj in iter_jsonl(path):
            doc_id = require_str(path, number, obj, "_id")
            title = require_str(path, number, obj, "title", allow_empty=True) if "title" in obj else ""
            text = require_str(path, number, obj, "text", allow_empty=True)
            _put_unique(corpus, doc_id, (title, text), path, number, "document id")
    else:
        for number, line in iter_lines(path):
            parts = _split_tsv(path, number, line, (2, 3))
            title = parts[2] if len(parts) == 3 else ""
            _put_unique(corpus, parts[0], (title, parts[1]), path, number, "document id")
    if not corpus:
        raise InputError(path, "empty corpus")
    empty = empty_documents(corpus)
    if empty:
        log.warning("%s: %d documents have neither title nor text (e.g. '%s')", path, len(empty), min(empty))
    return corpus


def passage_text(title: str, text: str) -> str:
    """The passage a reranker reads: `title + " " + text` when the document has a title, else the text."""
    return f"{title} {text}" if title.strip() else text


def read_queries(path) -> dict[str, str]:
    """Queries as {query id: text}: BEIR `queries.jsonl` (_id, text) or tsv `id<TAB>text`."""
    queries: dict[str, str] = {}
    if _is_jsonl(path):
        for number, obj in iter_jsonl(path):
            qid = require_str(path, number, obj, "_id")
            _put_unique(queries, qid, require_str(path, number, obj, "text"), path, number, "query id")
    else:
        for number, line in iter_lines(path):
            qid, text = _split_tsv(path, number, line, (2,))
            _put_unique(queries, qid, text, path, number, "query id")
    if not queries:
        raise InputError(path, "no queries")
    return queries


def _parse_int(path, number: int, value: str, field: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InputError(path, f"expected an integer, got '{value}'", number, field) from None


def _parse_rank(path, number: int, value: str) -> int:
    """A rank in 0..2^53, so that minus the rank is an exact float score."""
    rank = _parse_int(path, number, value, "rank")
    if not 0 <= rank <= 2**53:
        raise InputError(path, f"rank out of range 0..2^53, got '{value[:40]}'", number, "rank")
    return rank


def first_row(path, qid: str, doc_id: str | None = None) -> int | None:
    """Line number of the first qrels or run row for query `qid` (and document `doc_id`), to locate an error
    found after parsing; the document is the third column of 4 (TREC qrels) or 6 (TREC run), else the second."""
    for number, line in iter_lines(path):
        parts = line.split()
        doc = parts[2] if len(parts) in (4, 6) else parts[1] if len(parts) > 1 else None
        if parts[0] == qid and (doc_id is None or doc == doc_id):
            return number
    return None


def _parse_float(path, number: int, value: str, field: str) -> float:
    try:
        score = float(value)
    except ValueError:
        raise InputError(path, f"expected a number, got '{value}'", number, field) from None
    if score != score or score in (float("inf"), float("-inf")):
        raise InputError(path, f"non-finite value '{value}'", number, field)
    return score


def read_qrels(path) -> dict[str, dict[str, int]]:
    """Relevance judgments {qid: {doc id: grade}}: TREC (`qid 0 docid grade`) or BEIR tsv with header."""
    qrels: dict[str, dict[str, int]] = {}
    for number, line in iter_lines(path):
        parts = line.split()
        if number == 1 and parts and not parts[-1].lstrip("-").isdigit():
            continue  # BEIR header: query-id corpus-id score
        if len(parts) == 4:
            qid, _, doc_id, grade = parts
        elif len(parts) == 3:
            qid, doc_id, grade = parts
        else:
            raise InputError(path, f"expected 3 (BEIR) or 4 (TREC) columns, got {len(parts)}", number)
        judged = qrels.setdefault(qid, {})
        if doc_id in judged:
            raise InputError(path, f"duplicate judgment for query '{qid}', document '{doc_id}'", number)
        judged[doc_id] = _parse_int(path, number, grade, "relevance")
    if not qrels:
        raise InputError(path, "no judgments")
    return qrels


RUN_FORMAT_NAMES = {"trec": "TREC run (qid Q0 docid rank score name; ranked by score)",
                    "marco": "MS MARCO run (qid docid rank)", "scores": "score file (qid docid score)"}
_INTEGER = re.compile(r"[+-]?[0-9]+")


def detect_run_format(path, flag: str = "--run_format") -> str:
    """'trec' for 6 columns; for 3, 'scores' when a third column is not an integer, 'marco' when it counts 1, 2, 3 …
    within every query in file order; other integer columns are ambiguous (ranks or integer scores): an InputError
    asking for `flag` (the calling command's format flag) at the first row that breaks the count."""
    counts: dict[str, int] = {}
    first_break = None
    for number, line in iter_lines(path):
        parts = line.split()
        if len(parts) == 6 and not counts:
            return "trec"
        if len(parts) != 3:
            expected = "3 columns like the first row" if counts else "3 columns (MS MARCO / score file) or 6 (TREC)"
            raise InputError(path, f"expected {expected}, got {len(parts)}", number)
        if not _INTEGER.fullmatch(parts[2]):
            return "scores"
        expected = counts.get(parts[0], 0) + 1
        if first_break is None and (len(parts[2]) > 20 or int(parts[2]) != expected):
            first_break = number
        counts[parts[0]] = expected
    if not counts:
        raise InputError(path, "empty run")
    if first_break is not None:
        raise InputError(path, "ambiguous run: the third column holds integers that do not count 1, 2, 3 … per "
                               f"query, so they may be MS MARCO ranks or integer scores; pass {flag} marco or "
                               f"{flag} scores", first_break)
    return "marco"


def resolve_run_format(path, fmt: str = "auto", flag: str = "--run_format") -> str:
    """`fmt`, or the format detected in the file when it is 'auto' (`flag`: what the user sets it with)."""
    if fmt not in RUN_FORMATS:
        raise ValueError(f"run format must be one of {RUN_FORMATS}, got '{fmt}'")
    return detect_run_format(path, flag) if fmt == "auto" else fmt


def read_run(path, fmt: str = "auto") -> Run:
    """A ranked run {qid: [(doc id, score), …] best first} from TREC, MS MARCO or `qid pid score` files.

    Documents are ranked as trec_eval ranks them: by score, equal scores by document id (a TREC run's rank column
    is not used for ordering). MS MARCO runs carry ranks only; their score is minus the rank, so higher is better.
    """
    fmt = resolve_run_format(path, fmt)
    rows: dict[str, list[tuple[str, float]]] = {}
    seen: set[tuple[str, str]] = set()
    for number, line in iter_lines(path):
        parts = line.split()
        if fmt == "trec":
            if len(parts) != 6:
                raise InputError(path, f"expected 6 TREC columns (qid Q0 docid rank score name), got {len(parts)}", number)
            qid, doc_id = parts[0], parts[2]
            _parse_rank(path, number, parts[3])
            score = _parse_float(path, number, parts[4], "score")
        else:
            if len(parts) != 3:
                raise InputError(path, f"expected 3 columns (qid docid {'rank' if fmt == 'marco' else 'score'}), got {len(parts)}", number)
            qid, doc_id = parts[0], parts[1]
            if fmt == "marco":
                score = -float(_parse_rank(path, number, parts[2]))
            else:
                score = _parse_float(path, number, parts[2], "score")
        if (qid, doc_id) in seen:
            raise InputError(path, f"duplicate row for query '{qid}', document '{doc_id}'", number)
        seen.add((qid, doc_id))
        rows.setdefault(qid, []).append((doc_id, score))
    if not rows:
        raise InputError(path, "empty run")
    return {qid: [(d, s) for d, s in sorted(docs, key=lambda row: (-row[1], row[0]))] for qid, docs in rows.items()}


def run_format_note(path, fmt: str = "auto", flag: str = "--run_format") -> tuple[str, str]:
    """(the format `path` is read in, the line that says so: detected, or given with `flag`)."""
    resolved = resolve_run_format(path, fmt, flag)
    how = "detected" if fmt == "auto" else flag
    return resolved, f"{path}: read as a {RUN_FORMAT_NAMES[resolved]} ({how})"


def read_run_announced(path, fmt: str = "auto", flag: str = "--run_format") -> Run:
    """`read_run`, saying on stderr which format the file was read as (detected, or given with `flag`)."""
    resolved, note = run_format_note(path, fmt, flag)
    print(note, file=sys.stderr)
    return read_run(path, resolved)
