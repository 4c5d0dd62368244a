"""A first-stage run turned into training groups or rerank pairs (`bigrerank prepare train|rerank`).

Training groups: positives from the qrels (grade >= a minimum), negatives from the run's ranks `negatives_from` to
`depth` minus every judged-relevant document (grade >= 1), best-ranked first, then random corpus documents when
asked (negatives.py). Rerank pairs: each run query's top `depth` documents. Texts go out as they are, or as token
ids without special tokens, tokenized in parallel with `datasets.Dataset.map`.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..errors import InputError
from .collection import first_row
from .negatives import RandomNegatives


def check_documents_known(path, table: dict[str, dict | list], corpus: dict, corpus_path) -> None:
    """InputError at the first (query, document) row of a qrels or run whose document is not in the corpus."""
    for qid, docs in table.items():
        for doc_id in (docs if isinstance(docs, dict) else (d for d, _ in docs)):
            if doc_id not in corpus:
                raise InputError(path, f"unknown document id '{doc_id}' (not in {corpus_path})",
                                 first_row(path, qid, doc_id), "corpus-id")


def token_ids(texts: list[str], tokenizer, max_len: int, num_proc: int = 1) -> list[list[int]]:
    """Token ids (no special tokens, cut to max_len) of each text, in parallel with datasets.map."""
    from datasets import Dataset

    from .pairs import PairEncoder  # torch: only where token ids are written

    encoder = PairEncoder(tokenizer, max_len)
    table = Dataset.from_dict({"text": texts}).map(
        lambda batch: {"ids": encoder.token_ids(batch["text"])}, batched=True, batch_size=1000,
        num_proc=num_proc if num_proc > 1 else None, remove_columns=["text"], desc="tokenizing")
    return table["ids"]


def training_groups(queries: dict[str, str], qrels: dict[str, dict[str, int]], run: dict[str, list[tuple[str, float]]],
                    depth: int, negatives: int, min_relevance: int, empty: frozenset[str] = frozenset(),
                    negatives_from: int = 1, random_negatives: RandomNegatives | None = None,
                    ) -> tuple[list[tuple[str, list[str], list[str]]], Counter]:
    """(qid, positive ids, negative ids) per usable query, and a count of skipped queries by reason.

    Hard negatives come from run ranks `negatives_from`..`depth`; `random_negatives` adds its draw after them.
    Documents in `empty` (no title, no text) are left out of every group.
    """
    skipped: Counter = Counter()
    groups = []
    for qid, judged in qrels.items():
        if qid not in queries:
            skipped["judged queries absent from the queries file"] += 1
            continue
        positives = [d for d, grade in judged.items() if grade >= min_relevance and d not in empty]
        ranked = [d for d, _ in run.get(qid, [])[negatives_from - 1:depth] if d not in empty]
        chosen = [d for d in ranked if judged.get(d, 0) < 1][:negatives]
        if random_negatives is not None and positives:
            relevant = [d for d, grade in judged.items() if grade >= 1]
            chosen += random_negatives.draw(qid, exclude=[*relevant, *chosen, *empty])
        if not positives:
            skipped[f"queries with no judgment of grade >= {min_relevance}"] += 1
        elif not chosen:
            ranks = f"top {depth}" if negatives_from == 1 else f"ranks {negatives_from}-{depth}"
            skipped[f"queries with no unjudged-relevant document in the run's {ranks}"] += 1
        else:
            groups.append((qid, positives, chosen))
    unjudged = sum(1 for qid in run if qid not in qrels)
    if unjudged:
        skipped["run queries without judgments"] += unjudged
    return groups, skipped


def rerank_pairs(queries: dict[str, str], run: dict[str, list[tuple[str, float]]],
                 depth: int) -> tuple[list[tuple[str, str]], Counter]:
    """(qid, doc id) of each run query's top `depth` documents, and a count of skipped queries by reason."""
    skipped: Counter = Counter()
    pairs = []
    for qid, ranked in run.items():
        if qid not in queries:
            skipped["run queries absent from the queries file"] += 1
            continue
        pairs.extend((qid, d) for d, _ in ranked[:depth])
    return pairs, skipped


def ids_path(out) -> Path:
    """`pairs.jsonl` -> `pairs.ids.tsv`: the qid<TAB>pid file written beside rerank input."""
    return Path(out).with_suffix(".ids.tsv")
