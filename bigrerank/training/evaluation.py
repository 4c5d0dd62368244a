"""Evaluation while training: every --eval_steps optimizer steps, and at the end, the live engine scores the eval
candidates (read by `bigrerank rerank`'s readers, encoded by the training pair encoder) and the project's
`evaluate` turns the scores into ir_measures metrics.

Scoring is split over the data-parallel ranks: the candidates' length-sorted batches are dealt round-robin, and
every rank runs the same number of forward passes (a rank short of batches scores a copy of the shortest one
and drops it), which ZeRO-3 needs: each forward gathers the partitioned weights from every rank. The scores are
gathered to every rank, so each computes the same metrics. The model runs in eval mode under `no_grad`; every
module's train/eval mode and the RNG state are restored after, so training continues exactly as without it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .. import distributed
from ..checkpoints.best import BestCheckpoint
from ..data.collection import read_qrels
from ..errors import InputError
from ..evaluation.evaluate import DEFAULT_METRICS, evaluate, parse_metrics
from ..inference.candidates import Candidate, encode_candidates, read_pair_candidates, read_run_candidates
from ..inference.reranker import length_sorted_batches
from ..model import pair_scores
from ..rng import RngState

INPUT_FLAGS = ("eval_path", "eval_ids", "eval_run", "eval_queries", "eval_corpus", "eval_qrels")
JUDGED_BY = (*INPUT_FLAGS, "eval_run_format", "eval_depth")  # what the recorded best's values depend on (with the metric)


@dataclass
class EvalSet:
    candidates: list[Candidate]
    qrels: dict[str, dict[str, int]]


@dataclass
class Evaluation:
    step: int
    metrics: dict[str, float]      # {ir_measures name: mean over the judged queries}
    seconds: float
    headline: str                  # the metric shown on the bar: --metric_for_best_model

    def row(self) -> dict:
        """The train_log.jsonl / wandb keys: `eval_<metric>` and `eval_runtime`."""
        return {**{f"eval_{name}": value for name, value in self.metrics.items()}, "eval_runtime": self.seconds}


def enabled(args) -> bool:
    return args.eval_qrels is not None


def read_eval_set(args, vocab_size: int) -> EvalSet | None:
    """The eval candidates and qrels (None without --eval_qrels); a missing file is an InputError naming its flag."""
    if not enabled(args):
        return None
    for flag in INPUT_FLAGS:
        path = getattr(args, flag)
        if path is not None and not Path(path).is_file():
            raise InputError(path, f"--{flag}: no such file")
    if args.eval_path is not None:
        candidates = read_pair_candidates(args.eval_path, vocab_size, args.eval_ids, "--eval_ids")
    else:
        candidates = read_run_candidates(args.eval_run, args.eval_queries, args.eval_corpus, args.eval_depth,
                                         args.eval_run_format, "--eval_run_format")
    return EvalSet(candidates, read_qrels(args.eval_qrels))


def metric_names(best: str) -> list[str]:
    """ir_measures' names of the default metrics and the best model's, each once."""
    return list(dict.fromkeys(str(m) for m in parse_metrics([*DEFAULT_METRICS, best])))


def score_shards(engine, pairs: list, collate, batch_size: int) -> list[float]:
    """Scores of encoded `pairs` in order: this rank scores its share of the batches, all ranks gather them."""
    rank, world = distributed.rank(), distributed.world_size()
    batches = list(length_sorted_batches([len(ids) for ids, _ in pairs], batch_size))
    mine = batches[rank::world]
    scores = []
    for i in range(math.ceil(len(batches) / world)):
        indices = mine[i] if i < len(mine) else batches[-1]  # padding: every rank runs as many forwards
        batch = {name: value.to(engine.device) for name, value in collate([pairs[j] for j in indices]).items()}
        scored = pair_scores(engine, batch)
        if i < len(mine):
            scores.append(scored)
    own = ([j for indices in mine for j in indices], torch.cat(scores).tolist() if scores else [])
    shards = [own]
    if world > 1:
        shards = [None] * world
        dist.all_gather_object(shards, own)
    result = [0.0] * len(pairs)
    for indices, values in shards:
        for j, value in zip(indices, values):
            result[j] = value
    return result


class Evaluator:
    """Scores the eval set with the live engine when due and keeps the best checkpoint's record."""

    def __init__(self, eval_set: EvalSet, encoder, args, total_steps: int, resume_dir: Path | None = None):
        self.eval_set, self.collate = eval_set, encoder.collate
        self.pairs = encode_candidates(encoder, eval_set.candidates)
        self.every, self.total_steps, self.batch_size = args.eval_steps, total_steps, args.per_device_eval_batch_size
        self.metrics = metric_names(args.metric_for_best_model)
        self.best = BestCheckpoint(str(parse_metrics([args.metric_for_best_model])[0]),
                                   {flag: getattr(args, flag) for flag in JUDGED_BY})
        self.best.restore(resume_dir)

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total_steps

    def maybe_evaluate(self, engine, step: int) -> Evaluation | None:
        return self.evaluate(engine, step) if self.due(step) else None

    def evaluate(self, engine, step: int) -> Evaluation:
        start = time.perf_counter()
        modes, rng = {module: module.training for module in engine.modules()}, RngState()
        engine.eval()
        try:
            with torch.no_grad():
                scores = score_shards(engine, self.pairs, self.collate, self.batch_size)
        finally:
            for module, training in modes.items():
                module.training = training
            rng.restore()
        run: dict[str, dict[str, float]] = {}
        for candidate, score in zip(self.eval_set.candidates, scores):
            run.setdefault(candidate.qid, {})[candidate.pid] = score
        result = Evaluation(step, evaluate(self.eval_set.qrels, run, self.metrics), time.perf_counter() - start,
                            self.best.metric)
        self.best.evaluated(step, result.metrics)
        return result
