"""`bigrerank rerank`: score candidate pairs with a trained reranker -> `qid<TAB>pid<TAB>score` per pair.

Input is either JSON lines of pairs (`--input`, optionally with `--ids`) or a first-stage run with its queries
and corpus (`--run --queries --corpus [--depth]`). Pairs are tokenized in chunks (ahead of the model, in a
background thread), each chunk is scored in length-sorted, dynamically padded batches. Under `torchrun` or
`deepspeed` (RANK/WORLD_SIZE set) every rank scores a disjoint shard and rank 0 gathers and writes the file:
the scores of a one-process run, up to the float rounding of other batch shapes (< 1e-6 in the tests). Output
rows are grouped by query in input order.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from ..atomic import atomic_file
from ..errors import InputError
from .candidates import Candidate, encode_candidates, read_pair_candidates, read_run_candidates
from .host_memory import retain_freed_memory
from .reranker import RerankerForInference, default_device


@dataclass
class RerankArguments:
    model: str = field(metadata={"help": "Hugging Face model directory (output of `bigrerank train`/`consolidate`)"})
    output: str = field(metadata={"help": "score file to write: qid<TAB>pid<TAB>score per pair"})
    input: str | None = field(default=None, metadata={
        "help": "pairs as JSON lines {qid, pid, qry, psg}; qry/psg token ids (no special tokens) or text"})
    ids: str | None = field(default=None, metadata={
        "help": "with --input: its qid<TAB>pid file, one row per JSON line (rows must agree)"})
    run: str | None = field(default=None, metadata={"help": "first-stage run to rerank: TREC, MS MARCO or score tsv"})
    queries: str | None = field(default=None, metadata={"help": "with --run: queries (BEIR jsonl or id<TAB>text)"})
    corpus: str | None = field(default=None, metadata={
        "help": "with --run: corpus (BEIR jsonl or id<TAB>text[<TAB>title])"})
    depth: int | None = field(default=None, metadata={"help": "with --run: score each query's top K (None: all)"})
    batch_size: int = field(default=64, metadata={"help": "pairs per forward pass"})
    max_len: int | None = field(default=None, metadata={
        "help": "pair length limit in tokens, passage cut first (None: the model's limit, at most 512)"})
    bf16: bool = field(default=False, metadata={"help": "score in bfloat16 (CPU or GPU)"})
    fp16: bool = field(default=False, metadata={"help": "score in float16 (GPU only)"})
    torch_compile: bool = field(default=False, metadata={
        "help": "compile the model with torch.compile (one dynamic-shape graph, compiled at the first batch: "
                "15-30 s on 2 CPU cores); on CPU it pays in bf16, not in fp32; meant for bf16, GPUs and long runs"})
    tokenize_ahead: bool = field(default=True, metadata={
        "help": "tokenize the next chunk in a background thread while the model scores (--no_tokenize_ahead: off)"})
    chunk_size: int = field(default=4096, metadata={"help": "pairs tokenized and length-sorted together"})
    local_rank: int = field(default=-1, metadata={
        "help": "passed by the deepspeed launcher; the device comes from the LOCAL_RANK environment variable"})


def parse_arguments(argv: list[str] | None) -> RerankArguments:
    """Parsed arguments; a wrong combination of flags exits with a usage error."""
    parser = HfArgumentParser(RerankArguments)
    parser.prog = "bigrerank rerank"
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    if (args.input is None) == (args.run is None):
        parser.error("give exactly one input: --input PAIRS.jsonl, or --run RUN --queries Q --corpus C")
    if args.run is not None and (args.queries is None or args.corpus is None):
        parser.error("--run needs --queries and --corpus")
    if args.input is not None and any(v is not None for v in (args.queries, args.corpus, args.depth)):
        parser.error("--queries, --corpus and --depth go with --run, not --input")
    if args.run is not None and args.ids is not None:
        parser.error("--ids goes with --input, not --run")
    if args.bf16 and args.fp16:
        parser.error("--bf16 and --fp16 exclude each other")
    if args.fp16 and not torch.cuda.is_available():
        parser.error("--fp16 needs a CUDA GPU; on CPU use --bf16")
    for name in ("batch_size", "chunk_size", "depth", "max_len"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def precision(args: RerankArguments) -> str:
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def init_distributed() -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call started the process group) from torchrun-style env vars."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, default_device(), False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, started


def require_model_dir(model_dir) -> Path:
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(model_dir, "not a Hugging Face model directory (no config.json)")
    return model_dir


def open_reranker(model_dir, **options) -> RerankerForInference:
    """`RerankerForInference.from_pretrained(model_dir, **options)`; a directory it cannot use is an InputError."""
    model_dir = require_model_dir(model_dir)
    try:
        return RerankerForInference.from_pretrained(model_dir, **options)
    except ValueError as e:
        raise InputError(model_dir, str(e)) from None


def load_reranker(args: RerankArguments, device: torch.device) -> RerankerForInference:
    return open_reranker(args.model, max_len=args.max_len, device=device, precision=precision(args),
                         torch_compile=args.torch_compile)


def read_candidates(args: RerankArguments, vocab_size: int) -> list[Candidate]:
    if args.input is not None:
        return read_pair_candidates(args.input, vocab_size, args.ids)
    return read_run_candidates(args.run, args.queries, args.corpus, args.depth)


def encoded_chunks(encode, candidates: list[Candidate], chunk_size: int, ahead: bool) -> Iterator[list]:
    """Encoded chunks in order; with `ahead`, the next chunk is encoded in a worker thread meanwhile."""
    chunks = (candidates[start:start + chunk_size] for start in range(0, len(candidates), chunk_size))
    if not ahead:
        yield from map(encode, chunks)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
        pending = None
        for chunk in chunks:
            submitted = pool.submit(encode, chunk)
            if pending is not None:
                yield pending.result()
            pending = submitted
        if pending is not None:
            yield pending.result()


def score_candidates(reranker: RerankerForInference, candidates: list[Candidate], args: RerankArguments,
                     show_progress: bool = True) -> list[float]:
    """Scores of `candidates` in order."""
    encoder = reranker.encoder()
    scores: list[float] = []
    with tqdm(total=len(candidates), unit="pair", desc="rerank", disable=None if show_progress else True) as bar:
        for pairs in encoded_chunks(lambda chunk: encode_candidates(encoder, chunk), candidates,
                                    args.chunk_size, args.tokenize_ahead):
            scores.extend(reranker.score_encoded(pairs, args.batch_size, bar))
    return scores


def gather_shards(shard_scores: list[float], rank: int, world: int, total: int) -> list[float] | None:
    """On rank 0: all scores in candidate order (rank r scored candidates r, r + world, ...); None elsewhere."""
    if world == 1:
        return shard_scores
    shards = [None] * world if rank == 0 else None
    dist.gather_object(shard_scores, shards, dst=0)
    if rank != 0:
        return None
    scores = [0.0] * total
    for r, shard in enumerate(shards):
        scores[r::world] = shard
    return scores


def write_scores(path, candidates: list[Candidate], scores: list[float]) -> None:
    with atomic_file(path, "w", encoding="utf-8") as f:
        for candidate, score in zip(candidates, scores):
            f.write(f"{candidate.qid}\t{candidate.pid}\t{score:.9g}\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    retain_freed_memory()  # this process only scores: reuse freed activation memory (host_memory.py)
    rank, world, device, started = init_distributed()
    try:
        reranker = load_reranker(args, device)
        candidates = read_candidates(args, len(reranker.tokenizer))
        start = time.perf_counter()
        shard_scores = score_candidates(reranker, candidates[rank::world], args, show_progress=rank == 0)
        scores = gather_shards(shard_scores, rank, world, len(candidates))
        if rank == 0:
            write_scores(args.output, candidates, scores)
            elapsed = time.perf_counter() - start
            queries = len({c.qid for c in candidates})
            print(f"bigrerank rerank: {len(candidates)} pairs, {queries} queries, {elapsed:.1f} s "
                  f"({len(candidates) / elapsed:.1f} pairs/s, {world} rank(s), {reranker.precision}) -> {args.output}",
                  file=sys.stderr)
    finally:
        if started:
            dist.destroy_process_group()
    return 0
