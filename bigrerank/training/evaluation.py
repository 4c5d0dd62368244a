"""Evaluation while training: every --eval_steps optimizer steps, and at the end, the live engine scores the eval
candidates (the candidate source `bigrerank rerank` reads, encoded by the training pair encoder) and the metrics
of `bigrerank eval` are taken of the scores.

Scoring is split over the data-parallel ranks with every rank running the same number of forward passes
(sharded_scoring.py), which ZeRO-3 needs; the scores are gathered to every rank, so each computes the same
metrics. The model runs in eval mode under `no_grad`; every module's train/eval mode and the RNG state are
restored after, so training continues exactly as without it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed
from ..checkpoints.best import BestCheckpoint
from ..data.candidates import Candidate, CandidateSource, encode_candidates
from ..data.collection import read_qrels
from ..errors import InputError
from ..evaluation.metrics import DEFAULT_METRICS, evaluate, parse_metrics
from ..model import pair_scores
from ..rng import RngState
from ..sharded_scoring import score_sharded

SOURCE_FLAGS = {"pairs": "eval_path", "ids": "eval_ids", "run": "eval_run", "queries": "eval_queries",
                "corpus": "eval_corpus", "depth": "eval_depth", "run_format": "eval_run_format"}
JUDGED_BY = (*SOURCE_FLAGS.values(), "eval_qrels")  # what the recorded best's values depend on (with the metric)


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


def eval_source(args) -> CandidateSource:
    """The eval candidates' source, as the --eval_* flags give it."""
    return CandidateSource(**{name: getattr(args, flag) for name, flag in SOURCE_FLAGS.items()},
                           flags={name: f"--{flag}" for name, flag in SOURCE_FLAGS.items()})


def read_eval_set(args, vocab_size: int) -> EvalSet | None:
    """The eval candidates and qrels (None without --eval_qrels); a missing file is an InputError naming its flag."""
    if not enabled(args):
        return None
    source = eval_source(args)
    source.check_files()
    if not Path(args.eval_qrels).is_file():
        raise InputError(args.eval_qrels, "--eval_qrels: no such file")
    candidates, qrels = source.read(vocab_size), read_qrels(args.eval_qrels)
    if not qrels.keys() & {c.qid for c in candidates}:
        raise InputError(args.eval_qrels, f"--eval_qrels: none of its {len(qrels)} judged queries has eval "
                                          "candidates (every metric would be 0): qrels of another split?")
    return EvalSet(candidates, qrels)


def metric_names(best: str) -> list[str]:
    """ir_measures' names of the default metrics and the best model's, each once."""
    return list(dict.fromkeys(str(m) for m in parse_metrics([*DEFAULT_METRICS, best])))


def score_shards(engine, pairs: list, collate, batch_size: int) -> list[float]:
    """The engine's scores of encoded `pairs`, in order, on every rank; each rank scores its share."""
    def score_batch(batch_pairs):
        return pair_scores(engine, {name: value.to(engine.device) for name, value in collate(batch_pairs).items()})

    return score_sharded(score_batch, pairs, batch_size, rank=distributed.rank(), world=distributed.world_size())


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
