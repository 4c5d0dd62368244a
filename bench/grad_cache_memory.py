"""Peak memory and step time of training against group size, with and without the gradient cache.

For group sizes 8, 16, 32, 64 (1 query a step, MiniLM-L6, SciFact groups, max_len 128, ZeRO-2), each point
in a FRESH process that calls `bigrerank.training.trainer.train` and records, after every step's backward:
  CPU: the process's peak RSS (resource.getrusage ru_maxrss; includes imports, model, optimizer state);
  CUDA: torch.cuda.max_memory_allocated.
A baseline process (imports + model + DeepSpeed engine, no step) gives the fixed part, reported as
"peak - base" (the activation/optimizer memory a step adds). Step time is steps 2..N from train_log.jsonl.
Targets: with the cache, peak(group 64) / peak(group 8) <= 1.15; cached / plain step time <= 1.35.

    python bench/grad_cache_memory.py [--groups 8,16,32,64] [--chunk 8] [--steps 2] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PEAK_TARGET, TIME_TARGET = 1.15, 1.35


def peak_mb(cuda: bool) -> float:
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(argv: list[str], baseline: bool) -> dict:
    """Train (or, for the baseline, only build the engine) in this process; return peak memory in MiB."""
    import torch

    from bigrerank import distributed, ds_config
    from bigrerank.commands.train import parse
    from bigrerank.model import load_config
    from bigrerank.training import trainer

    cuda = torch.cuda.is_available()
    model_args, data_args, args = parse(argv)
    if baseline:
        distributed.init(args.ddp_timeout)
        trainer.build_engine(model_args, load_config(model_args.model_name_or_path), args, 1, args.max_steps,
                             ds_config.load(args.ds_config))
        peaks = [peak_mb(cuda)]
    else:
        peaks = []
        trainer.train(model_args, data_args, args, on_reduced=lambda engine: peaks.append(peak_mb(cuda)))
    distributed.teardown()
    return {"peak_mb": max(peaks), "device": "cuda" if cuda else "cpu"}


def run_point(data: Path, out: Path, group: int, chunk: int, steps: int, threads: int, baseline=False) -> dict:
    extra = ("--grad_cache_chunk_size", str(chunk)) if chunk else ()
    argv = common.trainer_argv(common.minilm_dir(), data, out, "zero2.json", group, 1, steps, 128, extra)
    cmd = [sys.executable, __file__, "--child", "base" if baseline else "train", *argv]
    done = common.run_child(cmd, common.child_env(threads))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not baseline:
        rows = common.timed_rows(common.read_log(out))
        result["step_s"] = group / common.mean_rate(rows, "pairs_per_s")
    return result


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[3:], baseline=sys.argv[2] == "base")))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", default="8,16,32,64")
    parser.add_argument("--chunk", type=int, default=8, help="--grad_cache_chunk_size of the cached runs")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per point (>= 2; the first is warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores)")
    opts = parser.parse_args()
    if opts.steps < 2:
        parser.error("--steps must be >= 2")

    import os

    from bigrerank.data.grouped import load_groups
    from bigrerank.model import load_tokenizer

    threads = opts.threads or os.cpu_count()
    groups = [int(g) for g in opts.groups.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "scifact_groups.jsonl"
        source = common.write_groups(data, negatives=max(groups) - 1, queries=32)
        # Convert once here, so no child's peak includes the one-time Arrow conversion.
        load_groups(str(data), vocab_size=len(load_tokenizer(common.minilm_dir())), group_size=max(groups))
        base = run_point(data, tmp / "base", groups[0], 0, opts.steps, threads, baseline=True)
        for group in groups:
            for chunk in (0, opts.chunk):
                results[(group, chunk)] = run_point(data, tmp / f"g{group}_c{chunk}", group, chunk, opts.steps,
                                                    threads)
    unit = "max_memory_allocated" if base["device"] == "cuda" else "peak RSS"
    rows = []
    for group in groups:
        plain, cached = results[(group, 0)], results[(group, opts.chunk)]
        rows.append([group, f"{plain['peak_mb']:.0f}", f"{plain['peak_mb'] - base['peak_mb']:.0f}",
                     f"{cached['peak_mb']:.0f}", f"{cached['peak_mb'] - base['peak_mb']:.0f}",
                     f"{plain['step_s']:.2f}", f"{cached['step_s']:.2f}", f"{cached['step_s'] / plain['step_s']:.2f}"])
    first, last = groups[0], groups[-1]
    ratio = {c: results[(last, c)]["peak_mb"] / results[(first, c)]["peak_mb"] for c in (0, opts.chunk)}
    added = lambda g, c: results[(g, c)]["peak_mb"] - base["peak_mb"]  # noqa: E731
    extra = {c: added(last, c) / max(added(first, c), 1e-9) for c in (0, opts.chunk)}
    print(f"Gradient-cache memory, {common.model_label()}, {source}, 1 query a step, max_len 128, ZeRO-2, "
          f"steps 2..{opts.steps} timed, {threads} threads; {common.machine()}; {unit} in MiB, "
          f"base (imports + model + engine) {base['peak_mb']:.0f} MiB")
    print(common.table(["group", "plain peak", "plain peak-base", f"cached(K={opts.chunk}) peak", "cached peak-base",
                        "plain step s", "cached step s", "cached/plain time (target <= 1.35)"], rows))
    print(f"peak group {last} / group {first}: plain {ratio[0]:.2f}, cached {ratio[opts.chunk]:.2f} "
          f"(target <= {PEAK_TARGET}: {'ok' if ratio[opts.chunk] <= PEAK_TARGET else 'missed'}); "
          f"peak-base group {last} / group {first}: plain {extra[0]:.2f}, cached {extra[opts.chunk]:.2f}")
    worst = max(results[(g, opts.chunk)]["step_s"] / results[(g, 0)]["step_s"] for g in groups)
    print(f"worst cached/plain step time {worst:.2f} (target <= {TIME_TARGET}: "
          f"{'ok' if worst <= TIME_TARGET else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
