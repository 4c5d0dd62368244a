"""`bigrerank retrieve`: BM25 first stage, corpus + queries -> TREC run of each query's top `depth` documents."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..data.collection import read_corpus, read_qrels, read_queries
from ..retrieval import bm25_run, write_trec
from .outputs import check_output
from .parser import CommandParser, at_least


@dataclass
class RetrieveArguments:
    corpus: str = field(metadata={"help": "corpus: BEIR corpus.jsonl or tsv id<TAB>text[<TAB>title]"})
    queries: str = field(metadata={"help": "queries: BEIR queries.jsonl or tsv id<TAB>text"})
    output: str = field(metadata={"help": "output TREC run file", "aliases": ["--out"]})
    depth: int = field(default=100, metadata={"help": "documents kept per query"})
    split_qrels: str | None = field(default=None, metadata={"help": "only retrieve for queries judged in this qrels file"})

    def __post_init__(self):
        at_least(self, ["depth"], 1)


def main(argv: list[str] | None = None) -> int:
    (args,) = CommandParser(RetrieveArguments, "retrieve").parse(argv)
    check_output(args.output, [args.corpus, args.queries, args.split_qrels])
    corpus, queries = read_corpus(args.corpus), read_queries(args.queries)
    if args.split_qrels:
        judged = read_qrels(args.split_qrels)
        missing = [q for q in judged if q not in queries]
        if missing:
            print(f"skipped {len(missing)} judged queries absent from {args.queries}")
        queries = {q: text for q, text in queries.items() if q in judged}
    run = bm25_run(corpus, queries, args.depth)
    write_trec(run, args.output)
    empty = sum(1 for ranked in run.values() if not ranked)
    print(f"retrieved {sum(map(len, run.values()))} candidates for {len(run)} queries "
          f"over {len(corpus)} documents -> {args.output}" + (f" ({empty} queries matched no document)" if empty else ""))
    return 0
