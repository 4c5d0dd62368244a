"""Evaluation while training: it leaves the training exactly as without it (1 rank ZeRO-2, 2 ranks ZeRO-3
collaborative with the gradient cache), its metrics are those of `bigrerank rerank` + `evaluate` on the saved
checkpoint, the best checkpoint survives rotation and resumes, and --load_best_model_at_end exports it."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bigrerank import cli, distributed
from bigrerank.checkpoints import store
from bigrerank.checkpoints.best import BestCheckpoint
from bigrerank.checkpoints.consolidate import TRAINING_INFO, consolidate
from bigrerank.data.collection import read_qrels, read_run
from bigrerank.evaluation.metrics import evaluate
from bigrerank.training.evaluation import metric_names, score_shards
from tests.dist_harness import run_jobs
from tests.helpers import log_rows, train_argv
from tests.tiny import tiny_model_dir, tiny_tokenizer, write_eval_set, write_groups

METRICS = metric_names("nDCG@10")


# batches of 4 queries at a high learning rate, a checkpoint every 2 of the 6 steps
SETTINGS = {"per_device_train_batch_size": 4, "learning_rate": "1e-2", "warmup_steps": 2, "save_steps": 2,
            "max_steps": 6}


def _run_flags(files, batch):
    return ["--eval_run", str(files["run"]), "--eval_queries", str(files["queries"]), "--eval_corpus",
            str(files["corpus"]), "--eval_qrels", str(files["qrels"]), "--eval_steps", "2",
            "--per_device_eval_batch_size", str(batch)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: output dir} of the runs the tests read, each world size started once (twice for the resume)."""
    tmp = tmp_path_factory.mktemp("train_eval")
    model = tiny_model_dir(tmp / "model", dropout=0.1, init_range=0.2)  # dropout: the RNG must be restored
    train = write_groups(tmp / "groups.jsonl", queries=32)
    files = write_eval_set(tmp / "eval")
    out = {name: tmp / name for name in ("off", "on", "pairs", "flat", "resumed", "off3", "on3")}
    pairs = ["--eval_path", str(files["pairs"]), "--eval_ids", str(files["ids"]), "--eval_qrels", str(files["qrels"]),
             "--eval_steps", "2", "--logging_steps", "3", "--load_best_model_at_end"]
    # one candidate per query: every evaluation scores the same, so the best stays the first saved one, step 2
    flat = [*_run_flags(files, 4), "--eval_depth", "1", "--save_total_limit", "2", "--load_best_model_at_end"]
    run_jobs(1, [train_argv(model, train, out["off"], "zero2", **SETTINGS),
                 train_argv(model, train, out["on"], "zero2", *_run_flags(files, 4), "--save_total_limit", "1",
                            "--load_best_model_at_end", **SETTINGS),
                 train_argv(model, train, out["pairs"], "zero2", *pairs, **SETTINGS),
                 train_argv(model, train, out["flat"], "zero2", *flat, **SETTINGS)])
    collaborative = ["--collaborative", "--grad_cache_chunk_size", "3"]
    run_jobs(2, [train_argv(model, train, out["off3"], "zero3", *collaborative, **SETTINGS),
                 train_argv(model, train, out["on3"], "zero3", *collaborative, *_run_flags(files, 7),
                            "--save_total_limit", "2", "--load_best_model_at_end", **SETTINGS)])
    (out["resumed"] / "checkpoints").mkdir(parents=True)
    shutil.copytree(out["flat"] / "checkpoints" / "step-2", out["resumed"] / "checkpoints" / "step-2")
    shutil.copy(out["flat"] / "train_log.jsonl", out["resumed"] / "train_log.jsonl")
    run_jobs(1, [train_argv(model, train, out["resumed"], "zero2", *flat, "--resume_from_checkpoint", "latest",
                            **SETTINGS)])
    return out, files


def _evals(out: Path) -> dict[int, dict[str, float]]:
    return {r["step"]: {m: r[f"eval_{m}"] for m in METRICS} for r in log_rows(out) if "eval_nDCG@10" in r}


def _best_step(evals: dict[int, dict[str, float]]) -> int:
    """The first saved step (every even step is saved) with the highest nDCG@10: strictly better replaces."""
    best = None
    for step in sorted(evals):
        if best is None or evals[step]["nDCG@10"] > evals[best]["nDCG@10"]:
            best = step
    return best


def _reranked_metrics(model_dir: Path, files, tmp_path: Path) -> dict[str, float]:
    scores = tmp_path / f"{model_dir.name}.scores.tsv"
    assert cli.main(["rerank", "--model", str(model_dir), "--run", str(files["run"]), "--queries",
                     str(files["queries"]), "--corpus", str(files["corpus"]), "--output", str(scores)]) == 0
    return evaluate(read_qrels(files["qrels"]), read_run(scores), METRICS)


def _weights(model_dir: Path) -> dict:
    return load_file(str(model_dir / "model.safetensors"))


def test_evaluation_on_one_rank_in_process_logs_each_evaluation_and_exports_the_best(tmp_path):
    """The fast subset's evaluation while training: one rank, this process, an evaluation every 2 steps."""
    model = tiny_model_dir(tmp_path / "model", init_range=0.2)
    train = write_groups(tmp_path / "groups.jsonl", queries=32)
    files = write_eval_set(tmp_path / "eval")
    out = tmp_path / "out"
    argv = train_argv(model, train, out, "zero2", *_run_flags(files, 4), "--load_best_model_at_end", **SETTINGS)
    try:
        assert cli.main(["train", *argv]) == 0
    finally:
        distributed.teardown(wait_for_others=False)
    evals = _evals(out)
    assert sorted(evals) == [2, 4, 6] and all(0 <= evals[s][m] <= 1 for s in evals for m in METRICS)
    best = _best_step(evals)
    assert json.loads((out / TRAINING_INFO).read_text())["step"] == best
    assert _reranked_metrics(out, files, tmp_path) == pytest.approx(evals[best], abs=1e-6, rel=0)


@pytest.mark.slow
@pytest.mark.parametrize("off,on", [("off", "on"), ("off3", "on3")])
def test_evaluation_leaves_the_training_unchanged(runs, tmp_path, off, on):
    out, _ = runs
    assert [r["loss"] for r in log_rows(out[off])] == [r["loss"] for r in log_rows(out[on])]
    last = consolidate(out[on] / "checkpoints", tmp_path / "last")  # `latest`: step 6, the run's final weights
    a, b = _weights(out[off]), _weights(last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("name,limit", [("on", 1), ("on3", 2)])
def test_metrics_equal_rerank_and_evaluate_of_the_checkpoints_and_the_best_is_exported(runs, tmp_path, name, limit):
    out, files = runs
    evals = _evals(out[name])
    assert sorted(evals) == [2, 4, 6]
    assert all(0 <= evals[s][m] <= 1 for s in evals for m in METRICS)
    best = _best_step(evals)
    tags = store.complete_tags(out[name] / "checkpoints")
    assert f"step-{best}" in tags and "step-6" in tags and len(tags) <= max(limit, 2)  # the best survives rotation
    info = json.loads((out[name] / TRAINING_INFO).read_text())
    assert info["step"] == best and info["eval"] == pytest.approx(evals[best], abs=0)
    manifest = store.read_manifest(out[name] / "checkpoints" / "step-6")
    assert manifest["client_state"]["best"]["step"] == best
    exported = _reranked_metrics(out[name], files, tmp_path)  # the export: the best checkpoint's model
    assert exported == pytest.approx(evals[best], abs=1e-6, rel=0)
    last = consolidate(out[name] / "checkpoints", tmp_path / "step-6", tag="step-6")
    assert _reranked_metrics(last, files, tmp_path) == pytest.approx(evals[6], abs=1e-6, rel=0)


@pytest.mark.slow
def test_both_candidate_forms_give_the_same_metrics_and_eval_rows_of_their_own(runs):
    out, _ = runs
    rows = log_rows(out["pairs"])
    assert [(r["step"], "loss" in r, "eval_nDCG@10" in r) for r in rows] == [
        (2, False, True), (3, True, False), (4, False, True), (6, True, True)]
    assert all(r["eval_runtime"] > 0 for r in rows if "eval_runtime" in r)
    assert _evals(out["pairs"]) == _evals(out["on"])  # same training, same pairs: --eval_path == --eval_run


@pytest.mark.slow
def test_a_resume_keeps_the_best_so_far(runs):
    """The best (step 2) is kept from rotation, and a resume from step 2 keeps it: without its record the resumed
    run would take step 4, its first evaluation, for the best and export that."""
    out, _ = runs
    straight, resumed = out["flat"], out["resumed"]
    evals = _evals(straight)
    assert sorted(evals) == [2, 4, 6] and evals[2] == evals[4] == evals[6]
    assert _evals(resumed) == evals  # step 2 kept from the log, 4 and 6 evaluated after the resume
    for out_dir in (straight, resumed):
        assert store.complete_tags(out_dir / "checkpoints") == ["step-2", "step-6"]  # step-4 rotated, not the best
        assert json.loads((out_dir / TRAINING_INFO).read_text())["step"] == 2
        assert store.read_manifest(out_dir / "checkpoints" / "step-6")["client_state"]["best"]["step"] == 2
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_load_best_model_at_end_exports_the_best_checkpoint_and_says_which(tmp_path, caplog):
    from types import SimpleNamespace

    from bigrerank.training.trainer import Checkpoints

    best = BestCheckpoint("nDCG@10", {})
    best.evaluated(4, {"nDCG@10": 0.75})
    best.checkpointed(4)
    args = SimpleNamespace(output_dir=str(tmp_path), load_best_model_at_end=True)
    final = tmp_path / "checkpoints" / "step-6"
    with caplog.at_level(logging.INFO):
        assert Checkpoints(None, None, args, {}, best).to_export(final) == final  # step-4 is not on disk
        assert "the best checkpoint" in caplog.text and "cannot be exported (it is gone)" in caplog.text
        (final.parent / "step-4").mkdir(parents=True)
        (final.parent / "step-4" / store.MANIFEST).write_text(json.dumps({"step": 4, "files": []}))
        assert Checkpoints(None, None, args, {}, best).to_export(final) == final.parent / "step-4"
    assert "exporting the best checkpoint, step 4 (nDCG@10 0.75)" in caplog.text
    args.load_best_model_at_end = False
    assert Checkpoints(None, None, args, {}, best).to_export(final) == final


class _RandomEngine(torch.nn.Module):
    """Enough of an engine for the evaluator: its forward draws random numbers and checks how it is called."""

    device = "cpu"

    def __init__(self):
        super().__init__()
        self.head, self.frozen = torch.nn.Linear(1, 1), torch.nn.Dropout(0.5).eval()

    def forward(self, input_ids, **_):
        assert not self.training and not self.head.training and not torch.is_grad_enabled()
        noise = torch.rand(len(input_ids), 1)  # draws from the RNG the training continues with
        return type("Output", (), {"logits": input_ids.float().sum(1, keepdim=True) + 0 * noise})()


def test_evaluation_restores_every_module_mode_and_the_rng(tmp_path):
    from types import SimpleNamespace

    from bigrerank.data.pairs import PairEncoder
    from bigrerank.data.candidates import Candidate
    from bigrerank.training.evaluation import JUDGED_BY, EvalSet, Evaluator

    candidates = [Candidate("q1", "a", "new york", "new york today"), Candidate("q1", "b", "new york", "python"),
                  Candidate("q2", "c", "code", "python code code"), Candidate("q2", "d", "code", "cold")]
    qrels = {"q1": {"a": 1}, "q2": {"d": 1}}
    args = SimpleNamespace(eval_steps=2, per_device_eval_batch_size=3, metric_for_best_model="RR@10",
                           **dict.fromkeys(JUDGED_BY))
    evaluator = Evaluator(EvalSet(candidates, qrels), PairEncoder(tiny_tokenizer(), 32), args, total_steps=5)
    engine = _RandomEngine().train()
    engine.frozen.eval()  # a module the training keeps in eval mode stays so
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    assert [s for s in range(1, 6) if evaluator.due(s)] == [2, 4, 5]
    result = evaluator.maybe_evaluate(engine, 2)
    assert torch.equal(torch.rand(4), expected)
    assert engine.training and engine.head.training and not engine.frozen.training
    # the longer passage scores higher (the fake score sums token ids): q1 ranks a first, q2 ranks c first
    assert result.metrics["RR@10"] == pytest.approx((1 + 1 / 2) / 2) and result.headline == "RR@10"
    assert set(result.row()) == {f"eval_{m}" for m in metric_names("RR@10")} | {"eval_runtime"}
    assert evaluator.best.metrics_at(2) == result.metrics and evaluator.maybe_evaluate(engine, 3) is None


def test_eval_metrics_go_to_the_log_wandb_and_the_bar(tmp_path):
    """An evaluation at a step that logs nothing else is a row of its own; at a logging step it joins that row."""
    from types import SimpleNamespace

    from bigrerank.training.evaluation import Evaluation
    from bigrerank.training.progress import Progress, TrainLog

    logged = []
    wandb_run = SimpleNamespace(log=lambda row, step: logged.append((step, row)), finish=lambda: None)
    engine = SimpleNamespace(get_global_grad_norm=lambda: 1.5, get_lr=lambda: [0.1], skipped_steps=0)
    progress = Progress(SimpleNamespace(logging_steps=4, fp16=False), 4, 8, 0,
                        TrainLog(tmp_path / "train_log.jsonl", 0, wandb_run), zero0=False)
    metrics = {"nDCG@10": 0.5, "RR@10": 0.25}
    for step in (1, 2, 3, 4):
        progress.step_done(engine, step, Evaluation(step, metrics, 0.0, "nDCG@10") if step % 2 == 0 else None)
    progress.close()
    rows = log_rows(tmp_path)
    assert rows[0] == {"step": 2, "epoch": 0.5, "eval_nDCG@10": 0.5, "eval_RR@10": 0.25, "eval_runtime": 0.0}
    assert rows[1]["step"] == 4 and rows[1]["grad_norm"] == 1.5 and rows[1]["eval_nDCG@10"] == 0.5
    assert [step for step, _ in logged] == [2, 4]  # wandb gets each row (loss is NaN here: no micro-batch added)
    assert all(sorted(row) == sorted(set(r) - {"step"}) and row["eval_nDCG@10"] == 0.5
               for (_, row), r in zip(logged, rows))
    assert progress.bar.postfix == "eval_nDCG@10=0.5000, loss=nan, lr=1.00e-01"


def test_rotation_spares_the_best_and_latest(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8):
        (root / f"step-{step}").mkdir(parents=True)
        (root / f"step-{step}" / store.MANIFEST).write_text(json.dumps({"step": step, "files": []}))
    (root / "latest").write_text("step-8")
    store.rotate(root, keep=2, protect="step-2")
    assert store.complete_tags(root) == ["step-2", "step-8"]
    store.rotate(root, keep=1, protect="step-4")  # a protected tag that is gone counts for nothing
    assert store.complete_tags(root) == ["step-8"]


def test_a_best_judged_otherwise_is_not_carried_over(tmp_path, caplog):
    tag = tmp_path / "step-4"
    tag.mkdir()
    record = {"step": 2, "metric": "nDCG@10", "value": 0.5, "judged_by": {"eval_qrels": "a.tsv"}}
    (tag / store.MANIFEST).write_text(json.dumps({"step": 4, "files": [], "client_state": {"best": record}}))
    same = BestCheckpoint("nDCG@10", {"eval_qrels": "a.tsv"})
    same.restore(tag)
    assert (same.step, same.value, same.tag) == (2, 0.5, "step-2")
    same.evaluated(6, {"nDCG@10": 0.5})
    assert same.checkpointed(6)["step"] == 2  # only strictly better replaces the best
    other = BestCheckpoint("nDCG@10", {"eval_qrels": "b.tsv"})
    with caplog.at_level(logging.WARNING):
        other.restore(tag)
    assert other.step is None and "judged with other evaluation settings" in caplog.text


def test_every_rank_runs_as_many_forwards_and_the_scores_come_back_in_order(monkeypatch):
    """8 pairs dealt to 3 ranks (3, 3 and 2 pairs), 2 to a batch: each runs 2 forwards (rank 2: one real, then its
    batch again as padding, dropped) and the gathered scores are every pair's, in input order."""
    from bigrerank import distributed, sharded_scoring
    from bigrerank.training import evaluation

    pairs = [([k] * n, [0] * n) for k, n in enumerate((5, 3, 9, 1, 7, 2, 8, 4), start=1)]
    collate = lambda rows: {"input_ids": torch.nn.utils.rnn.pad_sequence([torch.tensor(i) for i, _ in rows], True)}
    engine = type("Engine", (), {"device": "cpu"})()
    shards, forwards, results = [None] * 3, {}, {}
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    for gather_pass in ("collect", "check"):
        for rank in range(3):
            calls = forwards.setdefault((gather_pass, rank), [])
            monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
            monkeypatch.setattr(evaluation, "pair_scores",
                                lambda _, batch, calls=calls: calls.append(len(batch["input_ids"]))
                                or batch["input_ids"].sum(1).float())

            def gather(out, own, rank=rank):
                shards[rank] = shards[rank] or own
                out[:] = shards if gather_pass == "check" else [[0.0] * len(pairs[r::3]) for r in range(3)]

            monkeypatch.setattr(sharded_scoring.dist, "all_gather_object", gather)
            results[rank] = score_shards(engine, pairs, collate, batch_size=2)
    assert [len(forwards["check", r]) for r in range(3)] == [2, 2, 2]
    assert forwards["check", 2] == [2, 2]  # its own batch, then the padding forward (the same batch)
    expected = [float(sum(ids)) for ids, _ in pairs]
    assert results[0] == results[1] == results[2] == expected
