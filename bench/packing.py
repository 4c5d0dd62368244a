"""Padding-free packing against padded batches, side by side in one run (MiniLM-L6, SciFact, fp32, CPU).

    nice python bench/packing.py [--max_len 256] [--steps 4] [--rerank_pairs 512]

1. Training: the step bigrerank runs (training/steps.py, plain, LCE) on SciFact groups (1 positive + 7 BM25
   negatives, 4 queries a micro-batch): real tokens/s padded and packed at rows of 1, 2 and 4 x max_len, and the
   padding share of the padded batches. Timings interleave the modes, the median of `--steps` steps each.
2. Rerank: pairs/s of RerankerForInference on SciFact dev BM25 candidates, length-sorted padded batches (the
   default) against packed ones (the default rows).
3. Memory: the activation memory (tensors autograd saves for the backward) of the largest chunk of one
   gradient-cache step (8 queries x 8 passages), chunks of a fixed 8 pairs against chunks of at most 8 x max_len
   tokens (--grad_cache_max_tokens), padded and packed.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SCIFACT, machine, minilm_dir, require_scifact, table, write_scifact_groups  # noqa: E402
from bigrerank.contract import make_encoder, resolve_contract  # noqa: E402
from bigrerank.data.grouped import GroupSampler, load_groups  # noqa: E402
from bigrerank.data.packing import PACK_FACTOR  # noqa: E402
from bigrerank.inference.reranker import RerankerForInference  # noqa: E402
from bigrerank.losses import LOSSES  # noqa: E402
from bigrerank.model import load_config, load_reranker, load_tokenizer, pair_scores  # noqa: E402
from bigrerank.training.batches import encode_micro_batch  # noqa: E402
from bigrerank.training.shard import Shard  # noqa: E402
from bigrerank.training.steps import micro_batch_step  # noqa: E402

GROUP, QUERIES = 8, 4


def encoders(model_dir: str, max_len: int, factors: list[int]) -> dict[str, object]:
    config = load_config(model_dir)
    tokenizer = load_tokenizer(model_dir, config)
    contract = resolve_contract(model_dir, config, tokenizer, max_len=max_len)
    modes = {"padded": make_encoder(tokenizer, max_len, contract)}
    for factor in factors:
        modes[f"packed {factor}x"] = make_encoder(tokenizer, max_len, contract, factor * max_len)
    return modes


def micro_batches(groups_file: Path, encoder, count: int, queries: int = QUERIES) -> list[list[tuple]]:
    tokenizer = encoder.tokenizer
    sampler = GroupSampler(load_groups(str(groups_file), len(tokenizer), GROUP), GROUP, seed=0)
    order = sampler.epoch_order(0)
    return [[sampler.scored_group(i, 0)[:2] for i in order[k * queries:(k + 1) * queries]] for k in range(count)]


def step_seconds(model, micro) -> float:
    start = time.perf_counter()
    micro_batch_step(model, micro, LOSSES["lce"].fn, lambda surrogate, last: surrogate.backward())
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def bench_training(model_dir: str, groups_file: Path, max_len: int, steps: int) -> list[list]:
    modes = encoders(model_dir, max_len, [1, 2, 4])
    model = load_reranker(model_dir).train()
    draws = micro_batches(groups_file, modes["padded"], steps + 1)
    times = {name: [] for name in modes}
    tokens, computed = 0, 0
    for k, groups in enumerate(draws):
        for name, encoder in modes.items():
            micro = encode_micro_batch(groups, encoder, Shard(), 0, text=True)
            seconds = step_seconds(model, micro)
            if k:  # the first draw warms up
                times[name].append(seconds / micro.tokens)
            if name == "padded" and k:
                tokens += micro.tokens
                computed += micro.batches[0]["input_ids"].numel()
    padded = 1 / statistics.median(times["padded"])
    rows = []
    for name in modes:
        rate = 1 / statistics.median(times[name])
        rows.append([name, f"{rate:,.0f}", f"{rate / padded:.2f}x",
                     f"{1 - tokens / computed:.1%}" if name == "padded" else "-"])
    return rows


def scifact_candidates(count: int) -> tuple[list[str], list[str]]:
    from bigrerank.data.collection import read_corpus, read_queries, read_run

    corpus, queries = read_corpus(SCIFACT / "corpus.jsonl"), read_queries(SCIFACT / "queries.jsonl")
    run = read_run(SCIFACT / "runs" / "bm25.dev.top100.trec")
    pairs = [(queries[qid], " ".join(corpus[doc]).strip()) for qid in sorted(run) if qid in queries
             for doc, _ in run[qid][:20]]
    random.Random(0).shuffle(pairs)
    return [q for q, _ in pairs[:count]], [p for _, p in pairs[:count]]


def bench_rerank(model_dir: str, max_len: int, pairs: int, batch_size: int = 32) -> list[list]:
    queries, passages = scifact_candidates(pairs)
    tokenizer = load_tokenizer(model_dir)

    def reranker(**options):
        torch.manual_seed(0)  # the same new one-logit head on MiniLM for both
        return RerankerForInference(load_reranker(model_dir), tokenizer, max_len, device="cpu", **options)

    rerankers = {"length-sorted padded": reranker(), f"packed {PACK_FACTOR}x": reranker(padding_free=True)}
    encoded = rerankers["length-sorted padded"].encoder().encode_texts(queries, passages)
    seconds = {name: [] for name in rerankers}
    for _ in range(2):
        for name, reranker in rerankers.items():
            start = time.perf_counter()
            reranker.score_encoded(encoded, batch_size)
            seconds[name].append(time.perf_counter() - start)
    base = len(encoded) / min(seconds["length-sorted padded"])
    return [[name, f"{len(encoded) / min(s):,.1f}", f"{len(encoded) / min(s) / base:.2f}x"]
            for name, s in seconds.items()]


def saved_bytes(model, batch) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of one chunk's forward: its activation
    memory (the weights left out; no backward is run)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage  # held: a freed storage's address is not reused meanwhile

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda packed: packed):
        pair_scores(model, batch)
    return sum(storage.nbytes() for storage in storages.values())


def bench_memory(model_dir: str, groups_file: Path, max_len: int) -> list[list]:
    """The largest chunk's activation memory in a cached step of 8 queries x 8 passages (SciFact, mixed lengths)."""
    model = load_reranker(model_dir).train()
    rows = []
    for name, encoder in encoders(model_dir, max_len, [PACK_FACTOR]).items():
        groups = micro_batches(groups_file, encoder, 1, queries=8)[0]
        for label, chunk, max_tokens in [("--grad_cache_chunk_size 8", 8, 0),
                                         (f"--grad_cache_max_tokens {8 * max_len}", 0, 8 * max_len)]:
            micro = encode_micro_batch(groups, encoder, Shard(), chunk, text=True, max_tokens=max_tokens)
            peak = max(saved_bytes(model, batch) for batch in micro.batches)
            rows.append([f"{name}, {label}", len(micro.batches), f"{peak / 2 ** 20:,.0f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rerank_pairs", type=int, default=512)
    args = parser.parse_args()
    require_scifact()
    torch.manual_seed(0)
    model_dir = minilm_dir()
    with tempfile.TemporaryDirectory() as tmp:
        groups_file = Path(tmp) / "groups.jsonl"
        write_scifact_groups(groups_file, GROUP - 1)
        print(f"{machine()}; MiniLM-L6, SciFact, max_len {args.max_len}, fp32, {torch.get_num_threads()} threads")
        print(table(["training step (LCE, 4 x 8 pairs)", "real tokens/s", "vs padded", "padding"],
                    bench_training(model_dir, groups_file, args.max_len, args.steps)))
        print(table([f"rerank ({args.rerank_pairs} SciFact dev pairs, batch 32)", "pairs/s", "vs padded"],
                    bench_rerank(model_dir, args.max_len, args.rerank_pairs)))
        print(table(["cached step, 8 x 8 pairs", "chunks", "largest chunk's activations MiB"],
                    bench_memory(model_dir, groups_file, args.max_len)))


if __name__ == "__main__":
    main()
