"""The bundled default task: find the Python standard-library code that a docstring summary describes.

Every machine with Python has the standard library's source, so the demo needs no download. Each
public function, method or class with a docstring becomes a document — its qualified name as the
title, its source with every docstring cut out as the text — and the first paragraph of its
docstring becomes the query that document answers. Summaries that near-duplicate another one and
documents whose code duplicates another's are left out of the queries, so each query has one
right answer. The source is parsed with `ast` and never imported, so no module runs.

The result is deterministic for a given Python version (sorted walk, fixed seed) and written in
BEIR layout: corpus.jsonl, queries.jsonl, qrels/train.tsv, qrels/test.tsv.
"""
from __future__ import annotations

import ast
import json
import os
import random
import re
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..atomic import atomic_dir

SKIPPED_DIRS = {"test", "tests", "idle_test", "idlelib", "turtledemo", "lib2to3", "ensurepip",
                "site-packages", "dist-packages", "__pycache__", "__phello__"}
MAX_DOC_LINES = 60
MIN_DOC_LINES = 3
MIN_QUERY_WORDS = 4
MAX_QUERY_WORDS = 40
NEAR_DUPLICATE_JACCARD = 0.7
_WORD = re.compile(r"[a-z0-9]+")
_BAD_SUMMARY = re.compile(r">>>|deprecated|internal function|overrid|to be overwritten|^see |^same as |^alias|"
                          r"^(helper|constructor|initiali[sz]e)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Entry:
    """One documented definition: `doc_id` is its qualified name (module.Class.name)."""

    doc_id: str
    text: str
    summary: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(root: Path) -> Iterator[tuple[str, Path]]:
    """(module name, path) of the public standard-library source files, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in SKIPPED_DIRS and not d.startswith(("_", ".", "config-")))
        package = Path(dirpath).relative_to(root).parts
        for name in sorted(filenames):
            if not name.endswith(".py") or (name.startswith("_") and name != "__init__.py"):
                continue
            stem = name[:-3]
            parts = package if stem == "__init__" else (*package, stem)
            if parts:
                yield ".".join(parts), Path(dirpath) / name


def _docstring_node(node: ast.AST) -> ast.Expr | None:
    if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[0]
    return None


def _docstring_lines(tree: ast.Module, lines: list[str]) -> set[int]:
    """0-based numbers of every line that belongs to a docstring standing on its own lines."""
    dropped: set[int] = set()
    for node in ast.walk(tree):
        doc = _docstring_node(node)
        if doc is not None and lines[doc.lineno - 1][:doc.col_offset].strip() == "":
            dropped.update(range(doc.lineno - 1, doc.end_lineno))
    return dropped


def summarize(docstring: str) -> str | None:
    """The docstring's first paragraph on one line, or None when it makes no usable query."""
    paragraph = docstring.strip().split("\n\n")[0]
    summary = " ".join(paragraph.split())
    words = summary.split()
    if not (MIN_QUERY_WORDS <= len(words) <= MAX_QUERY_WORDS) or not summary[0].isalpha():
        return None
    if _BAD_SUMMARY.search(summary):
        return None
    return summary


def _document_text(node: ast.AST, lines: list[str], dropped: set[int]) -> str | None:
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1
    kept = [lines[i] for i in range(start, node.end_lineno) if i not in dropped and lines[i].strip()]
    if len(kept) < MIN_DOC_LINES:
        return None
    indent = len(kept[0]) - len(kept[0].lstrip())
    return "\n".join(line[indent:] if not line[:indent].strip() else line.lstrip() for line in kept[:MAX_DOC_LINES])


def _definitions(tree: ast.Module, prefix: str) -> Iterator[tuple[str, ast.AST]]:
    """(qualified name, node) of public functions, methods and classes, outer ones first."""
    stack = [(prefix, tree)]
    while stack:
        scope, parent = stack.pop(0)
        for node in getattr(parent, "body", []):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                name = f"{scope}.{node.name}"
                yield name, node
                if isinstance(node, ast.ClassDef):
                    stack.append((name, node))


def module_entries(module: str, path: Path) -> list[Entry]:
    """The documented public definitions of one source file; [] when it does not parse."""
    try:
        source = path.read_text(encoding="utf-8")
        with warnings.catch_warnings():  # invalid escape sequences in old sources warn while parsing
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    lines = source.splitlines()
    dropped = _docstring_lines(tree, lines)
    entries = []
    for name, node in _definitions(tree, module):
        docstring = ast.get_docstring(node)
        text = _document_text(node, lines, dropped) if docstring else None
        if text:
            entries.append(Entry(name, text, summarize(docstring) or ""))
    return entries


def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def unique_summaries(entries: list[Entry]) -> list[Entry]:
    """Entries whose summary has no near-duplicate (word Jaccard >= 0.7) among all the others."""
    sets = [_words(e.summary) for e in entries]
    by_word: dict[str, list[int]] = {}
    for i, words in enumerate(sets):
        for word in words:
            by_word.setdefault(word, []).append(i)
    duplicated: set[int] = set()
    for i, words in enumerate(sets):
        rarest = min(words, key=lambda w: len(by_word[w]))
        rare_words = sorted(words, key=lambda w: len(by_word[w]))[:max(1, len(words) // 3)]
        candidates = {j for w in {rarest, *rare_words} for j in by_word[w] if j != i}
        if any(len(words & sets[j]) >= NEAR_DUPLICATE_JACCARD * len(words | sets[j]) for j in candidates):
            duplicated.add(i)
    return [e for i, e in enumerate(entries) if i not in duplicated]


def collect_entries(root: Path | None = None) -> list[Entry]:
    """Every documented definition of the standard library, first of each qualified name and code text."""
    seen_ids: set[str] = set()
    seen_code: set[str] = set()
    entries = []
    for module, path in stdlib_sources(root or stdlib_root()):
        for entry in module_entries(module, path):
            code = " ".join(entry.text.split("\n", 1)[-1].split())  # the body, below the first line
            if entry.doc_id in seen_ids or code in seen_code:
                continue
            seen_ids.add(entry.doc_id)
            seen_code.add(code)
            entries.append(entry)
    return entries


def split_queries(entries: list[Entry], train_size: int, test_size: int, seed: int) -> tuple[list[Entry], list[Entry]]:
    """Disjoint (train, test) query entries drawn with a fixed seed from those with a unique summary."""
    candidates = unique_summaries([e for e in entries if e.summary])
    random.Random(seed).shuffle(candidates)
    if len(candidates) < train_size + test_size:
        raise ValueError(f"only {len(candidates)} usable queries for {train_size} train + {test_size} test")
    return candidates[test_size:test_size + train_size], candidates[:test_size]


def write_default_data(out_dir, train_size: int = 800, test_size: int = 150, seed: int = 0,
                       root: Path | None = None) -> dict[str, int]:
    """Write the default task in BEIR layout into `out_dir` (atomically); returns its sizes."""
    entries = collect_entries(root)
    train, test = split_queries(entries, train_size, test_size, seed)
    with atomic_dir(out_dir) as tmp:
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as f:
            for e in entries:
                f.write(json.dumps({"_id": e.doc_id, "title": e.doc_id, "text": e.text}) + "\n")
        (tmp / "qrels").mkdir()
        with open(tmp / "queries.jsonl", "w", encoding="utf-8") as queries:
            for split, chosen in (("train", train), ("test", test)):
                with open(tmp / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as qrels:
                    qrels.write("query-id\tcorpus-id\tscore\n")
                    for number, e in enumerate(sorted(chosen, key=lambda e: e.doc_id), start=1):
                        qid = f"{split}{number:04d}"
                        queries.write(json.dumps({"_id": qid, "text": e.summary}) + "\n")
                        qrels.write(f"{qid}\t{e.doc_id}\t1\n")
    return {"documents": len(entries), "train_queries": len(train), "test_queries": len(test)}
