"""`bigrerank rerank`: score candidate pairs with a trained reranker -> `qid<TAB>pid<TAB>score` per pair.

Input is either JSON lines of pairs (`--input`, optionally with `--ids`) or a first-stage run with its queries
and corpus (`--run --queries --corpus [--depth]`). Under `torchrun` or `deepspeed` (RANK/WORLD_SIZE set) every
rank scores a disjoint share and rank 0 writes the file (inference/rerank.py). Output rows are grouped by query
in input order.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch

from .. import distributed, hardware
from ..checkpoints.consolidate import TRAINING_INFO
from ..data.candidates import CandidateSource
from ..data.collection import RUN_FORMATS
from ..data.packing import PACK_FACTOR
from ..errors import UsageError
from ..host_memory import retain_freed_memory
from ..inference.rerank import (check_scoring, open_reranker, require_model, score_candidates, trained_max_len,
                                write_scores)
from ..inference.reranker import default_device
from .outputs import check_output
from .parser import CommandParser, at_least, check_packing_flags

SOURCE_FLAGS = {"pairs": "--input", "ids": "--ids", "run": "--run", "queries": "--queries", "corpus": "--corpus",
                "depth": "--depth", "run_format": "--run_format"}


@dataclass
class RerankArguments:
    model: str = field(metadata={"help": "Hugging Face model directory (output of `bigrerank train`/`consolidate`) "
                                         "or a .gguf file"})
    output: str = field(metadata={"help": "score file to write: qid<TAB>pid<TAB>score per pair"})
    input: str | None = field(default=None, metadata={
        "help": "pairs as JSON lines {qid, pid, qry, psg}; qry/psg token ids (no special tokens) or text"})
    ids: str | None = field(default=None, metadata={
        "help": "with --input: its qid<TAB>pid file, one row per JSON line (rows must agree)"})
    run: str | None = field(default=None, metadata={"help": "first-stage run to rerank: TREC, MS MARCO or score tsv"})
    run_format: str = field(default="auto", metadata={
        "help": "with --run: its format (auto: detected, and said; an ambiguous file needs it)",
        "choices": RUN_FORMATS})
    queries: str | None = field(default=None, metadata={"help": "with --run: queries (BEIR jsonl or id<TAB>text)"})
    corpus: str | None = field(default=None, metadata={
        "help": "with --run: corpus (BEIR jsonl or id<TAB>text[<TAB>title])"})
    depth: int | None = field(default=None, metadata={"help": "with --run: score each query's top K (None: all)"})
    batch_size: int = field(default=64, metadata={"help": "pairs per forward pass"})
    max_len: int | None = field(default=None, metadata={
        "help": "pair length limit in tokens, passage cut first (None: the length the model was trained at, from its "
                f"{TRAINING_INFO}; for other models their limit, at most 512)"})
    score_head: str | None = field(default=None, metadata={
        "help": "classifier or yes_no, for a model without bigrerank_scoring.json (default: its architecture's)"})
    template: str | None = field(default=None, metadata={
        "help": "pair, qwen3-reranker, bge-gemma, chat (the tokenizer's chat template) or a JSON file, for a model "
                "without bigrerank_scoring.json"})
    instruction: str | None = field(default=None, metadata={"help": "the prompt template's {instruction}"})
    bf16: bool = field(default=False, metadata={"help": "score in bfloat16 (CPU or GPU)"})
    fp16: bool = field(default=False, metadata={"help": "score in float16 (GPU only)"})
    torch_compile: bool = field(default=False, metadata={
        "help": "compile the model with torch.compile (one dynamic-shape graph, compiled at the first batch: "
                "15-30 s on 2 CPU cores); on CPU it pays in bf16, not in fp32; meant for bf16, GPUs and long runs"})
    tokenize_ahead: bool = field(default=True, metadata={
        "help": "tokenize the next chunk in a background thread while the model scores (--no_tokenize_ahead: off)"})
    chunk_size: int = field(default=4096, metadata={"help": "pairs tokenized and length-sorted together"})
    padding_free: bool = field(default=False, metadata={
        "help": "pack each batch's pairs into rows of --pack_len tokens instead of padding them (the same scores, "
                "checked at start-up)"})
    pack_len: int | None = field(default=None, metadata={
        "help": f"with --padding_free: tokens per packed row (default: {PACK_FACTOR} x the pair length limit)"})
    local_rank: int = field(default=-1, metadata={
        "help": "passed by the deepspeed launcher; the device comes from the LOCAL_RANK environment variable"})

    def __post_init__(self):
        problem = self.source().problem(required=True)
        if problem:
            raise UsageError(problem)
        if self.bf16 and self.fp16:
            raise UsageError("--bf16 and --fp16 exclude each other")
        if self.fp16 and not torch.cuda.is_available():
            raise UsageError("--fp16 needs a CUDA GPU; on CPU use --bf16")
        at_least(self, ["batch_size", "chunk_size", "max_len"], 1)
        check_packing_flags(self)

    def source(self) -> CandidateSource:
        return CandidateSource(self.input, self.ids, self.run, self.queries, self.corpus, self.depth, self.run_format,
                               flags=SOURCE_FLAGS)

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"


def start_ranks() -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call started the process group); one process unless launched."""
    if not distributed.launched():
        return 0, 1, default_device(), False
    started = distributed.init()
    return distributed.rank(), distributed.world_size(), distributed.device(), started


def check_paths(args: RerankArguments) -> None:
    """The model exists (a GGUF file: readable) and the output can be written over none of the inputs: checked before
    any work."""
    model = require_model(args.model)
    check_output(args.output, [*args.source().paths(), *(model.iterdir() if model.is_dir() else [model])])


def scoring_max_len(args: RerankArguments) -> int | None:
    """--max_len, else the model's training length; a length other than the training one is said on stderr."""
    trained = trained_max_len(args.model)
    if args.max_len is None and trained is not None:
        print(f"bigrerank rerank: max_len {trained}, the length the model was trained at ({TRAINING_INFO})",
              file=sys.stderr)
        return trained
    if args.max_len is not None and trained is not None and args.max_len != trained:
        print(f"bigrerank rerank: scoring at --max_len {args.max_len}, not at the model's training length {trained} "
              f"({TRAINING_INFO}): scores may differ from the trained model's", file=sys.stderr)
    return args.max_len


def main(argv: list[str] | None = None) -> int:
    (args,) = CommandParser(RerankArguments, "rerank").parse(argv)
    check_paths(args)
    max_len = scoring_max_len(args)
    check_scoring(args.model, max_len, args.score_head, args.template, args.instruction)  # before any rank starts
    retain_freed_memory()  # this process only scores: reuse freed activation memory (host_memory.py)
    rank, world, device, started = start_ranks()
    warning = hardware.bf16_warning() if args.bf16 and rank == 0 and device.type == "cpu" else None
    if warning:
        print(f"bigrerank rerank: warning: {warning}", file=sys.stderr)
    finished = False
    try:
        reranker = open_reranker(args.model, max_len=max_len, device=device, precision=args.precision,
                                 torch_compile=args.torch_compile, score_head=args.score_head, template=args.template,
                                 instruction=args.instruction, padding_free=args.padding_free, pack_len=args.pack_len)
        candidates = args.source().read(len(reranker.tokenizer))
        start = time.perf_counter()
        scores = score_candidates(reranker, candidates, args.batch_size, args.chunk_size, args.tokenize_ahead,
                                  show_progress=rank == 0, rank=rank, world=world)
        if rank == 0:
            write_scores(args.output, candidates, scores)
            elapsed = time.perf_counter() - start
            queries = len({c.qid for c in candidates})
            print(f"bigrerank rerank: {len(candidates)} pairs, {queries} queries, {elapsed:.1f} s "
                  f"({len(candidates) / elapsed:.1f} pairs/s, {world} rank(s), {reranker.precision}) -> {args.output}",
                  file=sys.stderr)
        finished = True
    finally:
        if started:
            distributed.teardown(wait_for_others=finished)
    return 0
