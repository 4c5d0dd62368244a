"""Scale of the training-data loader: a 1M-query, 30-negative token-id training set.

Writes the grouped JSON lines (short random token ids) into a temp dir, then in FRESH subprocesses:
  1. converts it once with `bigrerank.data.grouped.load_groups` (the one-time Arrow cache step),
  2. opens it again for training — the cost every run pays — and draws a few groups,
and reports wall time and peak RSS of each, side by side with a bare `import` baseline.
Target: opening takes < 2 s with peak RSS < 300 MB.

    python bench/data_scale.py [--queries 1000000] [--negatives 30] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OPEN_TARGET_S, RSS_TARGET_MB = 2.0, 300.0

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from bigrerank.data.grouped import GroupSampler, load_groups
t1 = time.perf_counter()
mode, path, cache = sys.argv[1:4]
if mode != "import":
    dataset = load_groups(path, vocab_size=30522, group_size=8, cache_dir=cache)
    sampler = GroupSampler(dataset, group_size=8, seed=0)
    order = sampler.epoch_order(0)
    for index in order[:64]:
        query, passages = sampler.group(index, 0)
        assert len(passages) == 8 and passages[0]
    rows = len(dataset)
else:
    rows = 0
t2 = time.perf_counter()
def status_mb():
    # VmHWM: this interpreter's own peak (ru_maxrss would include the parent's image from before exec);
    # RssAnon / RssFile: heap vs. memory-mapped file pages (the Arrow cache) resident at the end
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return {name: int(fields[key].split()[0]) / 1024
                for name, key in (("peak_rss_mb", "VmHWM"), ("anon_mb", "RssAnon"), ("file_mb", "RssFile"))}
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"peak_rss_mb": peak, "anon_mb": float("nan"), "file_mb": float("nan")}
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "rows": rows, **status_mb()}))
"""


def write_groups(path: Path, queries: int, negatives: int, tokens: int, seed: int = 0) -> float:
    """Write `queries` JSON lines of 1 positive + `negatives` passages of `tokens` random ids; returns seconds."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    pool = 100_000  # distinct passages, rendered once; each line picks its own from the pool
    passage_ids = rng.integers(1000, 30000, size=(pool, tokens))
    rendered = np.array([json.dumps({"pid": f"p{i}", "passage": row.tolist()}) for i, row in enumerate(passage_ids)])
    query_ids = rng.integers(1000, 30000, size=(queries, tokens))
    picks = rng.integers(0, pool, size=(queries, negatives + 1))
    chunk = 50_000
    with open(path, "w") as f:
        for lo in range(0, queries, chunk):
            lines = []
            for q in range(lo, min(lo + chunk, queries)):
                chosen = rendered[picks[q]]
                lines.append(f'{{"qry": {{"qid": "q{q}", "query": {query_ids[q].tolist()}}}, '
                             f'"pos": [{chosen[0]}], "neg": [{", ".join(chosen[1:])}]}}\n')
            f.write("".join(lines))
    return time.perf_counter() - start


def measure(mode: str, path: Path, cache: Path) -> dict:
    """Run one fresh interpreter: import only, or load_groups (+ a few sampled groups)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(cache)],
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1_000_000)
    parser.add_argument("--negatives", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=4, help="token ids per query and per passage")
    parser.add_argument("--keep", help="work in this directory and keep it (default: a temp dir, removed)")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bigrerank-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data, cache = work / "train.jsonl", work / "cache"
        gen_s = write_groups(data, args.queries, args.negatives, args.tokens)
        size_mb = data.stat().st_size / 2**20
        print(f"generated {args.queries:,} queries x (1 + {args.negatives}) passages, {size_mb:,.0f} MB JSON "
              f"in {gen_s:.1f} s", flush=True)
        baseline = measure("import", data, cache)
        convert = measure("load", data, cache)
        reopen = measure("load", data, cache)
        rows = [("import only (baseline)", baseline), ("first open: convert to Arrow (one-time)", convert),
                ("open for training (cached)", reopen)]
        print("\n| step | import s | load_groups s | process wall s | peak RSS MB | RSS vs baseline | "
              "heap (anon) MB at end | mapped file MB at end |\n|---|---|---|---|---|---|---|---|")
        for name, r in rows:
            print(f"| {name} | {r['import_s']:.2f} | {r['load_s']:.2f} | {r['wall_s']:.2f} | {r['peak_rss_mb']:.0f} | "
                  f"{r['peak_rss_mb'] / baseline['peak_rss_mb']:.2f}x | {r['anon_mb']:.0f} | {r['file_mb']:.0f} |")
        ok = reopen["load_s"] < OPEN_TARGET_S and reopen["peak_rss_mb"] < RSS_TARGET_MB
        print(f"\ncached open: {reopen['load_s']:.2f} s (target < {OPEN_TARGET_S} s), peak RSS "
              f"{reopen['peak_rss_mb']:.0f} MB (target < {RSS_TARGET_MB:.0f} MB): {'PASS' if ok else 'MISS'}; "
              f"conversion is {convert['load_s'] / max(reopen['load_s'], 1e-9):.0f}x the cached open")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
