"""Distillation end to end on the demo's data: a student trained with `--loss distill` on a teacher's scores.

    bigrerank demo --out out/demo                 # the data, and the teacher: the demo's LCE reranker
    python bench/distill.py --demo_dir out/demo

1. the teacher (`<demo_dir>/model`) scores every passage of the demo's training groups (`train.jsonl`), written
   as `distill/train.teacher.jsonl` with a "score" beside each passage;
2. a fresh MiniLM-L6 student is trained on them with `--loss distill`, the demo's recipe otherwise (150 steps,
   groups of 8, ZeRO-2), and, as the control, with `--loss lce` on the same file, same seed;
3. each reranks the held-out queries' BM25 top 30: nDCG@10 / RR@10 of BM25, the teacher, both students.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bigrerank import RerankerForInference
from bigrerank.atomic import atomic_file
from bigrerank.commands import rerank
from bigrerank.commands.demo import (FULL, METRICS, default_backbone, rerank_argv, rerank_with_tail, results_table,
                                     run_command, train, train_command)
from bigrerank.data.collection import iter_jsonl, read_qrels, read_run
from bigrerank.evaluation.metrics import evaluate


def teacher_scored_groups(teacher: Path, groups: Path, out: Path, max_len: int) -> int:
    """Write `groups` with the teacher's score beside every passage; returns the number of pairs scored."""
    records = [obj for _, obj in iter_jsonl(groups)]
    reranker = RerankerForInference.from_pretrained(teacher, max_len=max_len)
    queries = [r["qry"]["query"] for r in records for _ in r["pos"] + r["neg"]]
    passages = [p["passage"] for r in records for p in r["pos"] + r["neg"]]
    scores = iter(reranker.score(queries, passages, batch_size=64, progress=True))
    with atomic_file(out, "w", encoding="utf-8") as f:
        for record in records:
            for passage in record["pos"] + record["neg"]:
                passage["score"] = next(scores)
            f.write(json.dumps(record) + "\n")
    return len(passages)


def rerank_and_evaluate(model_dir: Path, demo: Path, scores: Path, qrels: dict, bm25: dict) -> dict[str, float]:
    """Metrics of `model_dir` reranking the demo's test queries' BM25 top `rerank_depth`, as the demo does."""
    run_command("rerank", rerank, rerank_argv(FULL, demo, model_dir, scores))
    return evaluate(qrels, rerank_with_tail(read_run(scores, fmt="scores"), bm25, FULL.rerank_depth), METRICS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo_dir", default="out/demo", help="a finished `bigrerank demo --out DIR`")
    demo = Path(parser.parse_args().demo_dir)
    if not (demo / "model" / "model.safetensors").is_file() or not (demo / "train.jsonl").is_file():
        sys.exit(f"{demo}: no finished demo here (run `bigrerank demo --out {demo}` first)")
    work = demo / "distill"
    work.mkdir(exist_ok=True)
    started = time.perf_counter()
    pairs = teacher_scored_groups(demo / "model", demo / "train.jsonl", work / "train.teacher.jsonl", FULL.max_len)
    print(f"teacher scored {pairs} pairs in {time.perf_counter() - started:.0f} s")

    qrels, bm25 = read_qrels(demo / "data" / "qrels" / "test.tsv"), read_run(demo / "runs" / "bm25.test.trec")
    rows = [("BM25", evaluate(qrels, bm25, METRICS)),
            ("teacher: the demo's LCE reranker",
             rerank_and_evaluate(demo / "model", demo, work / "teacher.tsv", qrels, bm25))]
    for loss in ("distill", "lce"):
        model_dir = work / f"student_{loss}"
        started = time.perf_counter()
        train(train_command(FULL, default_backbone(), work / "train.teacher.jsonl", model_dir) + ["--loss", loss],
              model_dir)
        print(f"student ({loss}) trained in {time.perf_counter() - started:.0f} s")
        rows.append((f"student, --loss {loss}",
                     rerank_and_evaluate(model_dir, demo, work / f"{loss}.tsv", qrels, bm25)))
    print("\n" + results_table(rows))


if __name__ == "__main__":
    main()
