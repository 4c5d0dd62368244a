"""Collaborative training: W=2 ranks share each query's group of 16, against one rank scoring all 16.

Both runs: MiniLM-L6, SciFact groups of 16 (1 positive + 15 BM25 negatives), 1 query a step, max_len 128, ZeRO-2,
OMP_NUM_THREADS=1 per process (one core per rank), fresh processes, steps 2..N timed from train_log.jsonl.
Pairs scored per rank per step are COUNTED inside each rank: the child wraps the trainer's
`micro_batch` and records its real pairs and the rows of the batches it forwards (padding included);
the schedule says the same (`group_slice(16, r, 2)` gives ranks 0 and 1 pairs [0, 8) and [8, 16)).
Step time = pairs per step (all ranks) / the log's pairs_per_s (which sums the ranks' pairs).
Target: 8 pairs per rank per step; collaborative step time close to half the single rank's.

    python bench/collaborative.py [--steps 3] [--group 16] [--world 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def child(argv: list[str], record_dir: Path) -> None:
    """One rank: train with a counting wrapper around the trainer's micro_batch; write rank<r>.json."""
    from bigrerank import distributed
    from bigrerank.commands.train import parse
    from bigrerank.training import trainer

    counted = []
    draw = trainer.micro_batch

    def counting_draw(*args, **kwargs):
        micro = draw(*args, **kwargs)
        forwarded = sum(int(batch["input_ids"].shape[0]) for batch in micro.batches)
        counted.append({"pairs": micro.pairs, "forwarded": forwarded})
        return micro

    trainer.micro_batch = counting_draw
    trainer.train(*parse(argv))
    (record_dir / f"rank{distributed.rank()}.json").write_text(json.dumps(counted))
    distributed.teardown()


def run(data: Path, out: Path, group: int, steps: int, world: int, collaborative: bool) -> dict:
    extra = ("--collaborative",) if collaborative else ()
    argv = common.trainer_argv(common.minilm_dir(), data, out / "model", "zero2.json", group, 1, steps, 128, extra)
    out.mkdir(parents=True)
    script = [__file__, "--child", str(out), *argv]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
    common.run_child(launcher + script if world > 1 else [sys.executable, *script], common.child_env(1))
    rows = common.timed_rows(common.read_log(out / "model"))
    per_rank = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    return {"step_s": group / common.mean_rate(rows, "pairs_per_s"),
            "pairs": [sorted({c["pairs"] for c in counts}) for counts in per_rank],
            "forwarded": [sorted({c["forwarded"] for c in counts}) for counts in per_rank]}


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[3:], Path(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run (>= 2; the first is warm-up)")
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--world", type=int, default=2)
    opts = parser.parse_args()
    if opts.steps < 2:
        parser.error("--steps must be >= 2")

    from bigrerank.training.shard import group_slice

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "scifact_groups.jsonl"
        source = common.write_groups(data, negatives=opts.group - 1, queries=32)
        single = run(data, tmp / "single", opts.group, opts.steps, 1, collaborative=False)
        collab = run(data, tmp / "collab", opts.group, opts.steps, opts.world, collaborative=True)
    schedule = [end - start for start, end in (group_slice(opts.group, r, opts.world) for r in range(opts.world))]
    show = lambda values: " / ".join(",".join(map(str, v)) for v in values)  # noqa: E731
    rows = [[f"1 rank, plain, group {opts.group}", show(single["pairs"]), show(single["forwarded"]),
             opts.group, f"{single['step_s']:.2f}", "1.00"],
            [f"{opts.world} ranks, collaborative, group {opts.group}", show(collab["pairs"]), show(collab["forwarded"]),
             " / ".join(map(str, schedule)), f"{collab['step_s']:.2f}", f"{collab['step_s'] / single['step_s']:.2f}"]]
    print(f"Collaborative training, {common.model_label()}, {source}, 1 query a step, max_len 128, ZeRO-2, "
          f"OMP_NUM_THREADS=1 per rank, steps 2..{opts.steps} timed; {common.machine()}")
    print(common.table(["run", "pairs scored per rank per step (counted)", "pairs forwarded per rank (incl. padding)",
                        "per rank by schedule", "step s", "step time vs 1 rank"], rows))
    expected = opts.group // opts.world
    ok = all(p == [expected] for p in collab["pairs"]) if opts.group % opts.world == 0 else None
    if ok is not None:
        print(f"pairs per rank per step = {expected}: {'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
