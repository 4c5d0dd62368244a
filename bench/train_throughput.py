"""Training throughput: bigrerank's DeepSpeed engine against a plain PyTorch loop and sentence-transformers.

Same backbone (MiniLM-L6), same SciFact groups (1 positive + 7 BM25 negatives, batch of 4 queries, max_len 128),
each configuration in a FRESH subprocess, the first step excluded from timing (warm-up):
  (a) plain loop: HF model, tokenizer call, LCE cross-entropy, backward, grad clipping, torch AdamW;
  (b) `launch/train.py` on ZeRO-0 and ZeRO-2, fp32 and bf16 where native (pairs/s from train_log.jsonl, steps 2..N);
  (c) sentence-transformers' CrossEncoderTrainer (v4+) with its listwise ListNetLoss over the same groups
      (labels [30, 0, ...]: a one-hot target, i.e. the same cross-entropy as LCE), in the same group order.
Model-FLOPs utilisation = common.model_flops (6 x non-embedding params + attention's 12 x layers x hidden x mean
pair length, per token) x tokens/s over a square-matmul peak measured in this run for each dtype.
Targets: bigrerank / plain loop >= 0.9; bigrerank / sentence-transformers >= 1.2.

    python bench/train_throughput.py [--steps 3] [--threads N] [--dtypes auto|fp32|fp32,bf16] [--st-dtypes fp32]
                                     [--skip-st]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GROUP, BATCH, MAX_LEN, SEED, LR = 8, 4, 128, 42, 2e-5
PLAIN_TARGET, ST_TARGET = 0.9, 1.2
ST_POSITIVE_LABEL = 30.0  # softmax([30, 0, ..., 0]) is one-hot to 1e-12: ListNet's target becomes LCE's


def step_groups(data: Path, steps: int) -> list[list[tuple[str, list[str]]]]:
    """The groups the trainer draws for steps 1..`steps` (seed 42, epoch 0), so every contender sees them."""
    from bigrerank.data.grouped import GroupSampler, load_groups

    sampler = GroupSampler(load_groups(str(data), group_size=GROUP), GROUP, SEED)
    order = sampler.epoch_order(0)
    return [[sampler.group(i, 0) for i in order[s * BATCH:(s + 1) * BATCH]] for s in range(steps)]


def plain_child(data: Path, steps: int, dtype: str) -> dict:
    """(a): the minimal hand-written loop; returns per-step seconds, pairs and tokens."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(SEED)
    model_dir = common.minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    rows = []
    for groups in step_groups(data, steps):
        start = time.perf_counter()
        queries = [q for q, passages in groups for _ in passages]
        passages = [p for _, ps in groups for p in ps]
        batch = tokenizer(queries, passages, truncation="only_second", max_length=MAX_LEN, padding=True,
                          return_tensors="pt")
        scores = model(**batch).logits.float().view(len(groups), GROUP)
        loss = torch.nn.functional.cross_entropy(scores, torch.zeros(len(groups), dtype=torch.long))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rows.append({"seconds": time.perf_counter() - start, "pairs": len(passages),
                     "tokens": int(batch["attention_mask"].sum())})
    return {"rows": rows}


def st_child(data: Path, steps: int, dtype: str, out: Path) -> dict:
    """(c): CrossEncoderTrainer + ListNetLoss, batches in the trainer's group order, timed per optimizer step."""
    import sentence_transformers
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as Args
    from sentence_transformers.cross_encoder.losses import ListNetLoss
    from torch.utils.data import BatchSampler, SequentialSampler
    from transformers import TrainerCallback

    class InOrder(CrossEncoderTrainer):
        def get_batch_sampler(self, dataset, batch_size, drop_last, *args, **kwargs):
            return BatchSampler(SequentialSampler(dataset), batch_size, drop_last)

    class StepClock(TrainerCallback):
        def __init__(self):
            self.seconds, self._start = [], None

        def on_step_begin(self, *args, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)

    torch.manual_seed(SEED)
    batches = step_groups(data, steps)
    dataset = Dataset.from_list([{"query": q, "docs": ps, "labels": [ST_POSITIVE_LABEL] + [0.0] * (len(ps) - 1)}
                                 for groups in batches for q, ps in groups])
    model = CrossEncoder(common.minilm_dir(), num_labels=1, max_length=MAX_LEN, device="cpu")
    args = Args(output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
                warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=dtype == "bf16", use_cpu=True,
                logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0,
                dataloader_drop_last=True, seed=SEED, disable_tqdm=True)
    clock = StepClock()
    trainer = InOrder(model=model, args=args, train_dataset=dataset, loss=ListNetLoss(model, mini_batch_size=0),
                      callbacks=[clock])
    trainer.train()
    tokens = [int(model.tokenizer([q] * len(ps), ps, truncation=True, max_length=MAX_LEN,
                                  padding=True, return_tensors="pt")["attention_mask"].sum())
              for groups in batches for q, ps in groups]
    per_step = [sum(tokens[s * BATCH:(s + 1) * BATCH]) for s in range(steps)]
    return {"version": sentence_transformers.__version__,
            "rows": [{"seconds": t, "pairs": BATCH * GROUP, "tokens": n} for t, n in zip(clock.seconds, per_step)]}


def child_rates(result: dict) -> tuple[float, float]:
    """(pairs/s, tokens/s) over steps 2..N: total work over total time."""
    timed = result["rows"][1:]
    seconds = sum(r["seconds"] for r in timed)
    return sum(r["pairs"] for r in timed) / seconds, sum(r["tokens"] for r in timed) / seconds


def run_own_child(kind: str, data: Path, steps: int, dtype: str, threads: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--data", str(data), "--steps", str(steps),
           "--dtype", dtype, "--out", str(out)]
    done = common.run_child(cmd, common.child_env(threads))
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_bigrerank(data: Path, steps: int, zero: int, dtype: str, threads: int, out: Path) -> tuple[float, float]:
    extra = ("--bf16",) if dtype == "bf16" else ()
    argv = common.trainer_argv(common.minilm_dir(), data, out, f"zero{zero}.json", GROUP, BATCH, steps, MAX_LEN, extra)
    common.run_child([sys.executable, str(common.REPO / "launch" / "train.py"), *argv], common.child_env(threads))
    rows = common.timed_rows(common.read_log(out))
    return common.mean_rate(rows, "pairs_per_s"), common.mean_rate(rows, "tokens_per_s")


def fmt_ratio(value: float | None, target: float) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} ({'ok' if value >= target else 'below'} {target})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run; the first is not timed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores)")
    parser.add_argument("--skip-st", action="store_true", help="leave sentence-transformers out")
    parser.add_argument("--dtypes", default="auto", help="dtypes of (a) and (b); auto: fp32, and bf16 where native")
    parser.add_argument("--st-dtypes", default="fp32", help="dtypes of (c) (its CPU bf16 autocast is slow)")
    parser.add_argument("--child", choices=["plain", "st"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child == "plain":
        print(json.dumps(plain_child(opts.data, opts.steps, opts.dtype)))
        return 0
    if opts.child == "st":
        print(json.dumps(st_child(opts.data, opts.steps, opts.dtype, opts.out)))
        return 0
    if opts.steps < 2:
        parser.error("--steps must be >= 2 (the first step is warm-up)")

    import os

    import torch

    common.require_scifact()
    threads = opts.threads or os.cpu_count()
    torch.set_num_threads(threads)
    dtypes = common.precisions(opts.dtypes)
    from bigrerank.model import load_reranker

    shape = common.model_shape(load_reranker(common.minilm_dir()))
    peaks = {d: common.matmul_gflops(torch.float32 if d == "fp32" else torch.bfloat16) for d in dtypes}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "scifact_groups.jsonl"
        common.write_scifact_groups(data, negatives=GROUP - 1)
        results, st_version = {}, None
        for dtype in dtypes:
            results[("plain", dtype)] = child_rates(run_own_child("plain", data, opts.steps, dtype, threads,
                                                                  tmp / f"plain_{dtype}"))
            for zero in (0, 2):
                results[(f"zero{zero}", dtype)] = run_bigrerank(data, opts.steps, zero, dtype, threads,
                                                                tmp / f"zero{zero}_{dtype}")
            if not opts.skip_st and dtype in opts.st_dtypes.split(","):
                try:
                    st = run_own_child("st", data, opts.steps, dtype, threads, tmp / f"st_{dtype}")
                    results[("st", dtype)], st_version = child_rates(st), st["version"]
                except RuntimeError as error:
                    print(f"sentence-transformers run failed ({error}); its column is left empty", file=sys.stderr)
        names = {"plain": "(a) plain PyTorch loop", "zero0": "(b) bigrerank ZeRO-0", "zero2": "(b) bigrerank ZeRO-2",
                 "st": f"(c) sentence-transformers {st_version} CrossEncoderTrainer"}
        for (kind, dtype), (pairs, tokens) in results.items():
            mfu = common.model_flops(shape, tokens, seq_len=tokens / pairs) / (peaks[dtype] * 1e9)
            plain = results.get(("plain", dtype))
            st = results.get(("st", dtype))
            vs_plain = pairs / plain[0] if kind.startswith("zero") and plain else None
            vs_st = pairs / st[0] if kind.startswith("zero") and st else None
            rows.append([names[kind], dtype, f"{pairs:.2f}", f"{tokens:.0f}", f"{100 * mfu:.1f}%",
                         fmt_ratio(vs_plain, PLAIN_TARGET), fmt_ratio(vs_st, ST_TARGET)])
    print(f"Training throughput, MiniLM-L6 ({shape.non_embedding_params / 1e6:.1f}M non-embedding params), SciFact groups of {GROUP}, {BATCH} queries "
          f"a step, max_len {MAX_LEN}, steps 2..{opts.steps} timed, {threads} threads; {common.machine()}")
    print("matmul peak (2048^3): " + ", ".join(f"{d} {peaks[d]:.0f} GFLOP/s" for d in dtypes))
    print(common.table(["configuration", "dtype", "pairs/s", "tokens/s", "MFU", "b/a (target >= 0.9)",
                        "b/c (target >= 1.2)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
