"""`bigrerank rerank`: score candidate pairs with a trained reranker -> `qid<TAB>pid<TAB>score` per pair.

Input is either JSON lines of pairs (`--input`, optionally with `--ids`) or a first-stage run with its queries
and corpus (`--run --queries --corpus [--depth]`). Pairs are tokenized in chunks (ahead of the model, in a
background thread), each chunk is scored in length-sorted, dynamically padded batches. Under `torchrun` or
`deepspeed` (RANK/WORLD_SIZE set) every rank scores a disjoint shard and rank 0 gathers and writes the file:
the scores of a one-process run, up to the float rounding of other batch shapes (< 1e-6 in the tests). Output
rows are grouped by query in input order.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .. import distributed
from ..atomic import atomic_file
from ..checkpoints.consolidate import TRAINING_INFO
from ..command_line import CommandParser
from ..data.collection import RUN_FORMATS
from ..errors import InputError
from ..outputs import check_output
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
        "help": "pair, qwen3-reranker, bge-gemma or a JSON file, for a model without bigrerank_scoring.json"})
    instruction: str | None = field(default=None, metadata={"help": "the prompt template's {instruction}"})
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
    parser = CommandParser(RerankArguments, "rerank")
    (args,) = parser.parse(argv)
    if (args.input is None) == (args.run is None):
        parser.error("give exactly one input: --input PAIRS.jsonl, or --run RUN --queries Q --corpus C")
    if args.run is not None and (args.queries is None or args.corpus is None):
        parser.error("--run needs --queries and --corpus")
    if args.input is not None and any(v is not None for v in (args.queries, args.corpus, args.depth)):
        parser.error("--queries, --corpus and --depth go with --run, not --input")
    if args.run is not None and args.ids is not None:
        parser.error("--ids goes with --input, not --run")
    if args.input is not None and args.run_format != "auto":
        parser.error("--run_format goes with --run, not --input")
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


def start_ranks() -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call started the process group); one process unless launched."""
    if not distributed.launched():
        return 0, 1, default_device(), False
    started = distributed.init()
    return distributed.rank(), distributed.world_size(), distributed.device(), started


def check_paths(args: RerankArguments) -> None:
    """The model directory exists and the output can be written over none of the inputs: checked before any work."""
    model_dir = require_model_dir(args.model)
    check_output(args.output, [args.input, args.ids, args.run, args.queries, args.corpus, *model_dir.iterdir()])


def trained_max_len(model_dir) -> int | None:
    """The pair length a bigrerank model was trained at (its `bigrerank_training.json`), None for other models."""
    path = Path(model_dir) / TRAINING_INFO
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("max_len")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise InputError(path, f"unreadable training record ({type(e).__name__})") from None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


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
    except InputError:
        raise
    except ValueError as e:
        raise InputError(model_dir, str(e)) from None


def load_reranker(args: RerankArguments, device: torch.device) -> RerankerForInference:
    return open_reranker(args.model, max_len=scoring_max_len(args), device=device, precision=precision(args),
                         torch_compile=args.torch_compile, score_head=args.score_head, template=args.template,
                         instruction=args.instruction)


def read_candidates(args: RerankArguments, vocab_size: int) -> list[Candidate]:
    if args.input is not None:
        return read_pair_candidates(args.input, vocab_size, args.ids)
    return read_run_candidates(args.run, args.queries, args.corpus, args.depth, args.run_format)


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
    check_paths(args)
    retain_freed_memory()  # this process only scores: reuse freed activation memory (host_memory.py)
    rank, world, device, started = start_ranks()
    finished = False
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
        finished = True
    finally:
        if started:
            distributed.teardown(wait_for_others=finished)
    return 0
