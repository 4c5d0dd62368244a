"""The training loop: LCE (or BCE) reranker training on a DeepSpeed engine, top to bottom.

    python launch/train.py --model_name_or_path DIR --train_path data.jsonl --output_dir out \
        --ds_config ds_configs/zero2.json [--grad_cache_chunk_size K] [--collaborative] ...
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from .. import lora, losses
from ..checkpoints import store
from ..checkpoints.consolidate import TRAINING_INFO, consolidate
from ..data.grouped import GroupSampler, data_files, is_text, load_groups
from ..data.pairs import PairEncoder
from ..model import load_config, load_reranker, load_tokenizer
from ..planning import command as memory_plan
from . import distributed, ds_config, skip_non_finite
from .batches import encode_micro_batch
from .steps import ReductionScope, StepMode, micro_batch_step

log = logging.getLogger("bigrerank.train")
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: checkpoint written on SIGUSR1/SIGTERM; requeue and resume


class Preemption:
    """Remembers SIGUSR1/SIGTERM so the loop can finish its step, checkpoint and exit."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, _frame):
        log.warning("signal %s received: checkpointing after this step", signal.Signals(signum).name)
        self.requested = True

    def any_rank(self) -> bool:
        return distributed.all_reduce([float(self.requested)], "max")[0] > 0

    def restore(self) -> None:
        """Give the signals back to whoever handled them before training."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def schedule(num_queries: int, args, world: int) -> tuple[int, int, int]:
    """(queries per global micro-step, optimizer steps per epoch, total optimizer steps)."""
    per_micro = args.per_device_train_batch_size * (1 if args.collaborative else world)
    steps_per_epoch = num_queries // per_micro // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ValueError(f"{num_queries} training queries are fewer than one optimizer step needs "
                         f"({per_micro * args.gradient_accumulation_steps})")
    total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    return per_micro, steps_per_epoch, total


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only, as Hugging Face does (no decay for biases and norms)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(model_args, model_config, args, world: int, total_steps: int, raw_config: dict):
    """The DeepSpeed engine around the reranker; `model_config` (the backbone's) fills the config's "auto" sizes."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    hidden = getattr(model_config, "hidden_size", None)
    config = ds_config.resolve(raw_config, args, world, total_steps, hidden, path=args.ds_config)
    # ZeRO-3: while this object lives, from_pretrained partitions the weights as it loads them.
    keep_alive = HfDeepSpeedConfig(config) if ds_config.zero_stage(config) == 3 else None
    model = lora.prepare(load_reranker(model_args.model_name_or_path, model_args.head_init_std), model_args,
                         args.gradient_checkpointing, args.seed)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, args.weight_decay),
                                      config=config)
    skip_non_finite.guard(engine)
    del keep_alive
    return engine, config


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


def train(model_args, data_args, args, on_reduced=None):
    """Train and export into --output_dir; returns the DeepSpeed engine (still live, for callers that score).

    `on_reduced(engine)` (optional) sees each step's reduced gradients before the update.
    """
    raw_config = ds_config.load(args.ds_config)  # bad input fails here, before any process group starts
    data_files(data_args.train_path)
    model_config = load_config(model_args.model_name_or_path)
    lora.check_targets(model_args, model_config)
    memory_plan.check_training(model_args, data_args, args, raw_config, model_config)  # before the model loads
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path)
    distributed.init(args.ddp_timeout)
    rank, world = distributed.rank(), distributed.world_size()
    dataset = distributed.main_first(  # rank 0 validates and converts once; the others open the cache
        lambda: load_groups(data_args.train_path, vocab_size=len(tokenizer), group_size=data_args.train_group_size,
                            need_scores=args.loss in losses.TEACHER_LOSSES))
    text = is_text(dataset)
    sampler = GroupSampler(dataset, data_args.train_group_size, args.seed)
    per_micro, steps_per_epoch, total_steps = schedule(len(sampler), args, world)
    torch.manual_seed(args.seed)  # the same new head on every rank
    engine, config = build_engine(model_args, model_config, args, world, total_steps, raw_config)
    torch.manual_seed(args.seed + rank)  # dropout differs across ranks

    output_dir, ckpt_root = Path(args.output_dir), Path(args.output_dir) / "checkpoints"
    resume_dir = store.resolve(ckpt_root, args.resume_from_checkpoint)
    step = store.load(engine, resume_dir)["step"] if resume_dir else 0
    if resume_dir:
        log.info("resumed from %s at step %d", resume_dir, step)
    output_dir.mkdir(parents=True, exist_ok=True)

    info = {"base_model": model_args.model_name_or_path, "loss": args.loss, "train_group_size": data_args.train_group_size,
            "max_len": data_args.max_len, "learning_rate": args.learning_rate, "total_steps": total_steps,
            "zero_stage": ds_config.zero_stage(config), "bf16": args.bf16, "fp16": args.fp16, "world_size": world,
            "collaborative": args.collaborative, "grad_cache_chunk_size": args.grad_cache_chunk_size,
            "lora_r": model_args.lora_r, "gradient_checkpointing": args.gradient_checkpointing}
    train_log = wandb_run = None
    if distributed.is_main():
        wandb_run = start_wandb(args, output_dir, {**asdict(args), **info}) if args.report_to == "wandb" else None
        train_log = TrainLog(output_dir / "train_log.jsonl", step, wandb_run)

    encoder = PairEncoder(tokenizer, data_args.max_len)
    mode = StepMode(args.grad_cache_chunk_size, args.collaborative)
    accum = args.gradient_accumulation_steps
    preemption = Preemption()
    try:
        bar = tqdm(total=total_steps, initial=step, desc="train", disable=not distributed.is_main(), dynamic_ncols=True)
        window = {"loss": [], "pairs": 0.0, "tokens": 0.0, "start": time.perf_counter()}
        nonfinite_in_a_row = 0
        logs = lambda at_step: at_step % args.logging_steps == 0 or at_step == total_steps  # noqa: E731
        orders: dict[int, object] = {}  # the current epoch's query order

        module_norm = {}  # ZeRO-0, where DeepSpeed reports no gradient norm: the one the update sees

        def before_update(engine) -> None:
            if on_reduced is not None:
                on_reduced(engine)
            if ds_config.zero_stage(config) == 0 and logs(step + 1):
                module_norm[step + 1] = _module_grad_norm(engine)

        def save(at_step: int) -> Path:
            client = {"step": at_step, "args": asdict(args), "data": asdict(data_args)}
            return store.save(engine, ckpt_root, at_step, client, engine.module.config, tokenizer, args.save_total_limit,
                              hf_files={TRAINING_INFO: json.dumps({**info, "step": at_step}, indent=1),
                                        **lora.checkpoint_files(engine.module)})

        while step < total_steps:
            epoch, first_micro = divmod(step * accum, steps_per_epoch * accum)
            if epoch not in orders:
                orders = {epoch: sampler.epoch_order(epoch)}
            order = orders[epoch]
            step_finite = True
            with ReductionScope(engine, accum, before_update) as scope:
                for m in range(first_micro, first_micro + accum):
                    indices = order[m * per_micro:(m + 1) * per_micro]
                    if not args.collaborative:
                        indices = indices[rank * args.per_device_train_batch_size:(rank + 1) * args.per_device_train_batch_size]
                    drawn = [sampler.scored_group(i, epoch) for i in indices]
                    groups = [(query, passages) for query, passages, _ in drawn]
                    teacher = (torch.tensor([scores for _, _, scores in drawn], device=engine.device)
                               if args.loss in losses.TEACHER_LOSSES else None)
                    encoded = encode_micro_batch(groups, encoder, mode, rank, world, text)
                    batches = [{k: v.to(engine.device) for k, v in b.items()} for b in encoded.batches]
                    result = micro_batch_step(engine, batches, encoded.shape, data_args.train_group_size,
                                              encoded.real.to(engine.device),
                                              losses.group_loss(args.loss, args.temperature, teacher), mode,
                                              scope.backward)
                    if result.finite:
                        window["loss"].append(result.loss.item())
                    else:
                        step_finite = False
                        scope.skip_micro_batch()
                    window["pairs"] += encoded.pairs
                    window["tokens"] += encoded.tokens
            step += 1
            bar.update(1)
            nonfinite_in_a_row = 0 if step_finite else nonfinite_in_a_row + 1
            if not step_finite:
                log.warning("step %d: non-finite loss; its micro-batches were skipped (%d in a row)", step,
                            nonfinite_in_a_row)
                if nonfinite_in_a_row >= args.max_nonfinite_steps:
                    raise RuntimeError(f"{nonfinite_in_a_row} optimizer steps in a row had a non-finite loss "
                                       f"(--max_nonfinite_steps {args.max_nonfinite_steps}); stopping without saving")

            if logs(step):
                norm, own_norm = engine.get_global_grad_norm(), module_norm.pop(step, None)
                norm = own_norm if norm is None else float(norm)
                pairs, tokens = distributed.all_reduce([window["pairs"], window["tokens"]])
                elapsed = time.perf_counter() - window["start"]
                row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": _reduce_mean(window["loss"]),
                       "lr": engine.get_lr()[0], "grad_norm": norm, "pairs_per_s": pairs / elapsed,
                       "tokens_per_s": tokens / elapsed, "skipped_steps": engine.skipped_steps}
                if args.fp16:  # dynamic loss scaling: the current scale
                    row["loss_scale"] = float(engine.optimizer.cur_scale)
                if train_log:
                    train_log.write(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                window = {"loss": [], "pairs": 0.0, "tokens": 0.0, "start": time.perf_counter()}

            if preemption.any_rank() and step < total_steps:
                save(step)
                bar.close()
                log.warning("checkpoint at step %d written after a preemption signal; exiting with %d",
                            step, PREEMPTED_EXIT_CODE)
                distributed.teardown()
                sys.exit(PREEMPTED_EXIT_CODE)
            if step % args.save_steps == 0 and step < total_steps:
                save(step)
        bar.close()

        final = save(step)
        if distributed.is_main():
            consolidate(final, output_dir, adapter_only=model_args.adapter_only)
            if wandb_run is not None:
                wandb_run.finish()
        distributed.barrier()
        return engine
    finally:
        preemption.restore()


def main(argv: list[str] | None = None) -> int:
    from ..arguments import parse

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_args, data_args, args = parse(argv)
    try:
        train(model_args, data_args, args)
    except BaseException:
        distributed.teardown(wait_for_others=False)
        raise
    distributed.teardown()
    return 0
