"""`bigrerank prepare train|rerank`: turn a first-stage run into grouped training data or rerank input.

train:  one JSON line per query `{"qry": {"qid", "query"}, "pos": [{"pid", "passage"}], "neg": [...]}` —
        positives from the qrels (grade >= --min_relevance), negatives from the run's ranks --negatives_from
        to --depth minus every judged-relevant document (grade >= 1), best-ranked first, then
        --random_negatives corpus documents (negatives.py); with --teacher each passage gets the teacher's
        "score" (teacher.py).
rerank: one JSON line per candidate `{"qid", "pid", "qry", "psg"}` plus `qid<TAB>pid` lines in
        `<out>.ids.tsv` beside it, in the same order.

Texts are written as they are, or with --tokenizer as token ids without special tokens, cut to
--max_len; tokenization runs in parallel with `datasets.Dataset.map(num_proc=...)`.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_file
from ..command_line import CommandParser, at_least
from ..errors import InputError
from ..outputs import check_output
from .collection import (RUN_FORMATS, empty_documents, first_row, passage_text, read_corpus, read_qrels, read_queries,
                         read_run_announced)
from .negatives import RandomNegatives

SUBCOMMANDS = ("train", "rerank")


def check_documents_known(path, table: dict[str, dict | list], corpus: dict, corpus_path) -> None:
    """InputError at the first (query, document) row of a qrels or run whose document is not in the corpus."""
    for qid, docs in table.items():
        for doc_id in (docs if isinstance(docs, dict) else (d for d, _ in docs)):
            if doc_id not in corpus:
                raise InputError(path, f"unknown document id '{doc_id}' (not in {corpus_path})",
                                 first_row(path, qid, doc_id), "corpus-id")


def report_skipped(skipped: Counter, what: str) -> None:
    for reason, count in sorted(skipped.items()):
        print(f"skipped {count} {what}: {reason}")


@dataclass
class Tokenization:
    tokenizer: str | None = field(default=None, metadata={"help": "write token ids of this tokenizer (name or "
                                                               "directory) instead of text"})
    max_len: int = field(default=512, metadata={"help": "with --tokenizer: keep at most this many tokens per text"})
    num_proc: int = field(default=1, metadata={"help": "with --tokenizer: tokenizer processes"})

    def __post_init__(self):
        at_least(self, ["max_len", "num_proc"], 1)


def tokenize_texts(texts: list[str], options: Tokenization) -> list[list[int]]:
    """Token ids (no special tokens, cut to max_len) of each text, in parallel with datasets.map."""
    from datasets import Dataset

    from ..model import load_tokenizer
    from .pairs import PairEncoder

    encoder = PairEncoder(load_tokenizer(options.tokenizer), options.max_len)
    table = Dataset.from_dict({"text": texts}).map(
        lambda batch: {"ids": encoder.token_ids(batch["text"])}, batched=True, batch_size=1000,
        num_proc=options.num_proc if options.num_proc > 1 else None, remove_columns=["text"], desc="tokenizing")
    return table["ids"]


def text_table(texts: dict[str, str], options: Tokenization) -> dict[str, str | list[int]]:
    """{id: text} as it goes into the output: the text itself, or its token ids with --tokenizer."""
    if not options.tokenizer:
        return texts
    keys = list(texts)
    return dict(zip(keys, tokenize_texts([texts[k] for k in keys], options)))


@dataclass
class TrainArguments:
    corpus: str = field(metadata={"help": "corpus: BEIR corpus.jsonl or tsv id<TAB>text[<TAB>title]"})
    queries: str = field(metadata={"help": "queries: BEIR queries.jsonl or tsv id<TAB>text"})
    qrels: str = field(metadata={"help": "relevance judgments: TREC or BEIR tsv"})
    run: str = field(metadata={"help": "first-stage run the negatives come from (TREC, MS MARCO or score file)"})
    output: str = field(metadata={"help": "output grouped training data (.jsonl)", "aliases": ["--out"]})
    depth: int = field(default=100, metadata={"help": "negatives come from the run's top `depth` documents"})
    negatives: int = field(default=30, metadata={"help": "at most this many negatives per query"})
    min_relevance: int = field(default=1, metadata={"help": "lowest qrels grade that counts as a positive"})
    run_format: str = field(default="auto", metadata={
        "help": "format of --run (auto: detected, and said; an ambiguous file needs it)", "choices": RUN_FORMATS})

    negatives_from: int = field(default=1, metadata={
        "help": "hard negatives start at this run rank (1: the top); the ranks above it, where unjudged "
                "positives hide, are skipped"})
    random_negatives: int = field(default=0, metadata={
        "help": "also add this many random corpus documents per query as negatives (never a judged-relevant "
                "one; the same for the same --seed)"})
    seed: int = field(default=42, metadata={"help": "seed of --random_negatives"})
    teacher: str | None = field(default=None, metadata={
        "help": "a reranker (Hugging Face directory) that scores every passage of every group; written as each "
                "passage's \"score\", the target of `--loss distill`"})
    teacher_batch_size: int = field(default=64, metadata={"help": "with --teacher: pairs per forward pass"})
    teacher_max_len: int | None = field(default=None, metadata={
        "help": "with --teacher: pair length limit of the teacher (None: the model's limit, at most 512)"})
    teacher_precision: str = field(default="fp32", metadata={"help": "with --teacher: fp32, bf16 or fp16 (GPU)",
                                                             "choices": ("fp32", "bf16", "fp16")})

    def __post_init__(self):
        at_least(self, ["depth", "negatives", "negatives_from", "teacher_batch_size", "teacher_max_len"], 1)
        at_least(self, ["random_negatives"], 0)
        if self.negatives_from > self.depth:
            raise ValueError(f"--negatives_from {self.negatives_from} is deeper than --depth {self.depth}: "
                             "no rank to draw from")

    def check_outputs(self) -> None:
        check_output(self.output, [self.corpus, self.queries, self.qrels, self.run])


@dataclass
class RerankArguments:
    run: str = field(metadata={"help": "first-stage run to rerank (TREC, MS MARCO or score file)"})
    queries: str = field(metadata={"help": "queries: BEIR queries.jsonl or tsv id<TAB>text"})
    corpus: str = field(metadata={"help": "corpus: BEIR corpus.jsonl or tsv id<TAB>text[<TAB>title]"})
    output: str = field(metadata={"help": "output pairs (.jsonl); `<output>.ids.tsv` is written beside it",
                                  "aliases": ["--out"]})
    depth: int = field(default=100, metadata={"help": "rerank the run's top `depth` documents per query"})
    run_format: str = field(default="auto", metadata={
        "help": "format of --run (auto: detected, and said; an ambiguous file needs it)", "choices": RUN_FORMATS})

    def __post_init__(self):
        at_least(self, ["depth"], 1)

    def check_outputs(self) -> None:
        for path in (self.output, ids_path(self.output)):
            check_output(path, [self.corpus, self.queries, self.run])


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


def group_scores(args: TrainArguments, groups, queries: dict[str, str], corpus) -> dict[tuple[str, str], float]:
    """{(qid, doc id): the teacher's score} for every passage of every group."""
    from .teacher import teacher_scores

    keys = [(qid, d) for qid, positives, chosen in groups for d in (*positives, *chosen)]
    pairs = [(queries[qid], passage_text(*corpus[d])) for qid, d in keys]
    print(f"scoring {len(pairs)} pairs with the teacher {args.teacher}")
    return dict(zip(keys, teacher_scores(args.teacher, pairs, args.teacher_batch_size, args.teacher_max_len,
                                         args.teacher_precision)))


def prepare_train(args: TrainArguments, tokenization: Tokenization) -> int:
    if args.teacher:
        from ..inference.rerank import require_model_dir

        require_model_dir(args.teacher)
    corpus, queries = read_corpus(args.corpus), read_queries(args.queries)
    qrels, run = read_qrels(args.qrels), read_run_announced(args.run, args.run_format)
    check_documents_known(args.qrels, qrels, corpus, args.corpus)
    check_documents_known(args.run, run, corpus, args.corpus)
    empty = frozenset(empty_documents(corpus))
    sampler = RandomNegatives(corpus, args.random_negatives, args.seed) if args.random_negatives else None
    groups, skipped = training_groups(queries, qrels, run, args.depth, args.negatives, args.min_relevance, empty,
                                      args.negatives_from, sampler)
    if empty:
        print(f"left out of every group: {len(empty)} documents with neither title nor text")
    report_skipped(skipped, "queries")
    if not groups:
        raise InputError(args.qrels, "no query has both a positive and a negative: nothing to train on")
    used_docs = {d for _, pos, neg in groups for d in (*pos, *neg)}
    q_out = text_table({qid: queries[qid] for qid, _, _ in groups}, tokenization)
    p_out = text_table({d: passage_text(*corpus[d]) for d in sorted(used_docs)}, tokenization)
    scores = group_scores(args, groups, queries, corpus) if args.teacher else {}

    def passages(qid: str, docs: list[str]) -> list[dict]:
        return [{"pid": d, "passage": p_out[d], **({"score": scores[qid, d]} if scores else {})} for d in docs]

    with atomic_file(args.output, "w", encoding="utf-8") as f:
        for qid, positives, chosen in groups:
            f.write(json.dumps({"qry": {"qid": qid, "query": q_out[qid]},
                                "pos": passages(qid, positives), "neg": passages(qid, chosen)}) + "\n")
    mean_neg = sum(len(n) for _, _, n in groups) / len(groups)
    print(f"wrote {len(groups)} training groups ({mean_neg:.1f} negatives on average) -> {args.output}")
    return 0


def ids_path(out) -> Path:
    """`pairs.jsonl` -> `pairs.ids.tsv`: the qid<TAB>pid file written beside rerank input."""
    return Path(out).with_suffix(".ids.tsv")


def prepare_rerank(args: RerankArguments, tokenization: Tokenization) -> int:
    corpus, queries = read_corpus(args.corpus), read_queries(args.queries)
    run = read_run_announced(args.run, args.run_format)
    check_documents_known(args.run, run, corpus, args.corpus)
    skipped: Counter = Counter()
    pairs = []
    for qid, ranked in run.items():
        if qid not in queries:
            skipped["run queries absent from the queries file"] += 1
            continue
        pairs.extend((qid, d) for d, _ in ranked[:args.depth])
    report_skipped(skipped, "queries")
    if not pairs:
        raise InputError(args.run, f"no query of the run is in {args.queries}: nothing to rerank")
    q_out = text_table({q: queries[q] for q in dict.fromkeys(q for q, _ in pairs)}, tokenization)
    p_out = text_table({d: passage_text(*corpus[d]) for d in sorted({d for _, d in pairs})}, tokenization)
    with atomic_file(args.output, "w", encoding="utf-8") as f, atomic_file(ids_path(args.output), "w", encoding="utf-8") as ids:
        for qid, doc_id in pairs:
            f.write(json.dumps({"qid": qid, "pid": doc_id, "qry": q_out[qid], "psg": p_out[doc_id]}) + "\n")
            ids.write(f"{qid}\t{doc_id}\n")
    print(f"wrote {len(pairs)} pairs for {len(q_out)} queries -> {args.output} (+ {ids_path(args.output)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: bigrerank prepare {{{'|'.join(SUBCOMMANDS)}}} [options]  (--help after the subcommand for its options)",
              file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    arguments, prepare = (TrainArguments, prepare_train) if command == "train" else (RerankArguments, prepare_rerank)
    args, tokenization = CommandParser((arguments, Tokenization), f"prepare {command}").parse(rest)
    args.check_outputs()
    return prepare(args, tokenization)


if __name__ == "__main__":
    sys.exit(main())
