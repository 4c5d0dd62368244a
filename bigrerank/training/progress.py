"""The training log: every --logging_steps optimizer steps one row to <output_dir>/train_log.jsonl (rank 0),
mirrored to wandb when asked, and the tqdm bar. An evaluation's `eval_<metric>` keys join the step's row (a row
of their own at a step that logs nothing else); its time is not counted in the throughput."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .. import distributed


class TrainLog:
    """One JSON object a line in <output_dir>/train_log.jsonl (rank 0), mirrored to wandb when asked."""

    def __init__(self, path: Path, resume_step: int, wandb_run=None):
        self.path, self.wandb = path, wandb_run
        kept = []
        if resume_step and path.is_file():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def start_wandb(args, output_dir: Path, config: dict):
    import wandb

    netrc = Path.home() / ".netrc"
    configured = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    mode = os.environ.get("WANDB_MODE") or ("online" if configured else "offline")
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "bigrerank"), name=args.run_name, dir=str(output_dir),
                      mode=mode, config=config)


def _reduce_mean(values: list[float]) -> float:
    total, count = distributed.all_reduce([sum(values), float(len(values))])
    return total / count if count else float("nan")


def _module_grad_norm(engine) -> float | None:
    """Global norm of the module's (reduced) gradients, for ZeRO-0, where DeepSpeed reports none; one sync."""
    norms = [p.grad.detach().float().norm() for p in engine.module.parameters() if p.grad is not None]
    return torch.stack(norms).double().norm().item() if norms else None


class Progress:
    """The logging window (losses, pairs, tokens since the last row) and the bar; rows are written by rank 0."""

    def __init__(self, args, steps_per_epoch: int, total_steps: int, step: int, train_log: TrainLog | None,
                 zero0: bool):
        self.args, self.steps_per_epoch, self.total_steps = args, steps_per_epoch, total_steps
        self.train_log, self.zero0 = train_log, zero0
        self.bar = tqdm(total=total_steps, initial=step, desc="train", disable=not distributed.is_main(),
                        dynamic_ncols=True)
        self.module_norm: dict[int, float | None] = {}  # ZeRO-0: the gradient norm the update sees
        self.postfix: dict[str, str] = {}
        self._reset()

    def _reset(self) -> None:
        self.losses, self.pairs, self.tokens, self.data_wait, self.start = [], 0.0, 0.0, 0.0, time.perf_counter()

    def due(self, step: int) -> bool:
        return step % self.args.logging_steps == 0 or step == self.total_steps

    def before_update(self, engine, next_step: int) -> None:
        if self.zero0 and self.due(next_step):
            self.module_norm[next_step] = _module_grad_norm(engine)

    def add(self, micro, result, data_wait: float = 0.0) -> None:
        """Count a micro-batch's pairs and tokens, its loss when finite, and the seconds the step waited for it."""
        self.data_wait += data_wait
        if result.finite:
            self.losses.append(result.loss.item())
        self.pairs += micro.pairs
        self.tokens += micro.tokens

    def step_done(self, engine, step: int, evaluation=None) -> None:
        """The step is done (and `evaluation`, a training.evaluation.Evaluation, taken after it, or None)."""
        self.bar.update(1)
        extra = {}
        if evaluation is not None:
            self.start += evaluation.seconds
            extra = evaluation.row()
            self.postfix[f"eval_{evaluation.headline}"] = f"{evaluation.metrics[evaluation.headline]:.4f}"
        if self.due(step):
            self._write(engine, step, extra)
        elif extra:
            self._log({"step": step, "epoch": round(step / self.steps_per_epoch, 4), **extra})

    def _log(self, row: dict) -> None:
        if self.train_log:
            self.train_log.write(row)
            self.bar.set_postfix(self.postfix)

    def _write(self, engine, step: int, extra: dict) -> None:
        norm, own_norm = engine.get_global_grad_norm(), self.module_norm.pop(step, None)
        norm = own_norm if norm is None else float(norm)
        pairs, tokens = distributed.all_reduce([self.pairs, self.tokens])
        (data_wait,) = distributed.all_reduce([self.data_wait], "max")
        elapsed = time.perf_counter() - self.start
        row = {"step": step, "epoch": round(step / self.steps_per_epoch, 4), "loss": _reduce_mean(self.losses),
               "lr": engine.get_lr()[0], "grad_norm": norm, "pairs_per_s": pairs / elapsed,
               "tokens_per_s": tokens / elapsed, "data_wait_s": data_wait, "skipped_steps": engine.skipped_steps}
        if self.args.fp16:  # dynamic loss scaling: the current scale
            row["loss_scale"] = float(engine.optimizer.cur_scale)
        self.postfix.update(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
        self._log({**row, **extra})
        self._reset()

    def close(self) -> None:
        self.bar.close()
