"""`bigrerank prepare train|rerank`: turn a first-stage run into grouped training data or rerank input.

train:  one JSON line per query `{"qry": {"qid", "query"}, "pos": [{"pid", "passage"}], "neg": [...]}` —
        positives from the qrels (grade >= --min_relevance), negatives from the run's ranks --negatives_from
        to --depth minus every judged-relevant document (grade >= 1), best-ranked first, then
        --random_negatives corpus documents (data/negatives.py); with --teacher each passage gets the teacher's
        "score" (inference/teacher.py).
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

from ..atomic import atomic_file
from ..data.collection import (RUN_FORMATS, empty_documents, passage_text, read_corpus, read_qrels, read_queries,
                               read_run_announced)
from ..data.negatives import RandomNegatives
from ..data.prepare import check_documents_known, ids_path, rerank_pairs, token_ids, training_groups
from ..errors import InputError, UsageError
from .outputs import check_output
from .parser import CommandParser, at_least

SUBCOMMANDS = ("train", "rerank")


@dataclass
class Tokenization:
    tokenizer: str | None = field(default=None, metadata={"help": "write token ids of this tokenizer (name or "
                                                               "directory) instead of text"})
    max_len: int = field(default=512, metadata={"help": "with --tokenizer: keep at most this many tokens per text"})
    num_proc: int = field(default=1, metadata={"help": "with --tokenizer: tokenizer processes"})

    def __post_init__(self):
        at_least(self, ["max_len", "num_proc"], 1)


@dataclass
class PrepareTrainArguments:
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
        "help": "a reranker (Hugging Face directory or .gguf file) that scores every passage of every group; "
                "written as each passage's \"score\", the target of `--loss distill`"})
    teacher_batch_size: int = field(default=64, metadata={"help": "with --teacher: pairs per forward pass"})
    teacher_max_len: int | None = field(default=None, metadata={
        "help": "with --teacher: pair length limit of the teacher (None: the model's limit, at most 512)"})
    teacher_precision: str = field(default="fp32", metadata={"help": "with --teacher: fp32, bf16 or fp16 (GPU)",
                                                             "choices": ("fp32", "bf16", "fp16")})

    def __post_init__(self):
        at_least(self, ["depth", "negatives", "negatives_from", "teacher_batch_size", "teacher_max_len"], 1)
        at_least(self, ["random_negatives"], 0)
        if self.negatives_from > self.depth:
            raise UsageError(f"--negatives_from {self.negatives_from} is deeper than --depth {self.depth}: "
                             "no rank to draw from")

    def check_outputs(self) -> None:
        check_output(self.output, [self.corpus, self.queries, self.qrels, self.run])


@dataclass
class PrepareRerankArguments:
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


def report_skipped(skipped: Counter, what: str) -> None:
    for reason, count in sorted(skipped.items()):
        print(f"skipped {count} {what}: {reason}")


def text_table(texts: dict[str, str], options: Tokenization) -> dict[str, str | list[int]]:
    """{id: text} as it goes into the output: the text itself, or its token ids with --tokenizer."""
    if not options.tokenizer:
        return texts
    from ..model import load_tokenizer

    keys = list(texts)
    ids = token_ids([texts[k] for k in keys], load_tokenizer(options.tokenizer), options.max_len, options.num_proc)
    return dict(zip(keys, ids))


def group_scores(args: PrepareTrainArguments, groups, queries: dict[str, str], corpus) -> dict[tuple[str, str], float]:
    """{(qid, doc id): the teacher's score} for every passage of every group."""
    from ..inference.teacher import teacher_scores

    keys = [(qid, d) for qid, positives, chosen in groups for d in (*positives, *chosen)]
    pairs = [(queries[qid], passage_text(*corpus[d])) for qid, d in keys]
    print(f"scoring {len(pairs)} pairs with the teacher {args.teacher}")
    return dict(zip(keys, teacher_scores(args.teacher, pairs, args.teacher_batch_size, args.teacher_max_len,
                                         args.teacher_precision)))


def prepare_train(args: PrepareTrainArguments, tokenization: Tokenization) -> int:
    if args.teacher:
        from ..inference.rerank import require_model

        require_model(args.teacher)
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


def prepare_rerank(args: PrepareRerankArguments, tokenization: Tokenization) -> int:
    corpus, queries = read_corpus(args.corpus), read_queries(args.queries)
    run = read_run_announced(args.run, args.run_format)
    check_documents_known(args.run, run, corpus, args.corpus)
    pairs, skipped = rerank_pairs(queries, run, args.depth)
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
    arguments, prepare = ((PrepareTrainArguments, prepare_train) if command == "train"
                          else (PrepareRerankArguments, prepare_rerank))
    args, tokenization = CommandParser((arguments, Tokenization), f"prepare {command}").parse(rest)
    args.check_outputs()
    return prepare(args, tokenization)
