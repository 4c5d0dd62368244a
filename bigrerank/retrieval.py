"""BM25 first stage: corpus + queries -> a ranked run of each query's top `depth` documents.

bm25s, Lucene variant (k1=0.9, b=0.4), English stopwords and the Snowball English stemmer, over
title + text — the same settings as the runs shipped with the shared test collections.
"""
from __future__ import annotations

import bm25s
import Stemmer

from .atomic import atomic_file
from .data.collection import passage_text
from .data.runs import run_lines

K1, B = 0.9, 0.4
RUN_NAME = "bm25s"
PROGRESS_FROM = 20_000  # texts: smaller jobs take a second or two and show no progress bar


def _tokenize(texts: list[str], stemmer) -> bm25s.tokenization.Tokenized:
    return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=len(texts) >= PROGRESS_FROM)


def bm25_run(corpus: dict[str, tuple[str, str]], queries: dict[str, str], depth: int = 100) -> dict[str, list[tuple[str, float]]]:
    """{qid: [(doc id, score), …] best first, equal scores by doc id (as `read_run` orders them)}: at most `depth`
    documents that share a term with the query."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    stemmer = Stemmer.Stemmer("english")
    doc_ids = list(corpus)
    retriever = bm25s.BM25(k1=K1, b=B, method="lucene")
    retriever.index(_tokenize([passage_text(*corpus[d]) for d in doc_ids], stemmer),
                    show_progress=len(doc_ids) >= PROGRESS_FROM)
    qids = list(queries)
    if not qids:
        return {}
    tokens = _tokenize([queries[q] for q in qids], stemmer)
    hits, scores = retriever.retrieve(tokens, k=min(depth, len(doc_ids)), show_progress=len(qids) >= PROGRESS_FROM)
    return {qid: sorted(((doc_ids[int(i)], float(s)) for i, s in zip(hits[row], scores[row]) if s > 0),
                        key=lambda hit: (-hit[1], hit[0]))
            for row, qid in enumerate(qids)}


def write_trec(run: dict[str, list[tuple[str, float]]], path, name: str = RUN_NAME) -> None:
    """Write a run as TREC lines `qid Q0 docid rank score name` (atomic), scores with every digit of a float32, so
    that rounding makes no ties the ranking does not have."""
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.writelines(run_lines(run, "trec", name, score_format=".9g"))
