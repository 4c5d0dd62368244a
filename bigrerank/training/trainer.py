"""The training loop: LCE (or BCE, or distillation) reranker training on a DeepSpeed engine, top to bottom.

`train(model_args, data_args, args)` takes the `train` command's three settings objects (commands/train.py).
"""
from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from .. import distributed, ds_config, hardware, lora, losses
from ..checkpoints import store, universal
from ..checkpoints.best import CLIENT_KEY, BestCheckpoint
from ..checkpoints.consolidate import TRAINING_INFO, consolidate
from ..contract import CONTRACT_FILE, ScoringContract, make_encoder, resolve_contract
from ..data.grouped import GroupSampler, data_files, is_text, load_groups
from ..data.packing import row_length
from ..data.pairs import PairEncoder
from ..gguf_file import is_gguf
from ..host_memory import return_freed_memory
from ..model import check_packing, load_config, load_reranker, load_tokenizer
from ..planning.planner import check_training
from . import evaluation, output_dir, resume_check, skip_non_finite
from .batches import MicroBatchSource, draw_groups, micro_batch, micro_positions
from .prefetch import Prefetcher
from .preemption import Preemption
from .progress import Progress, TrainLog, start_wandb
from .shard import Shard
from .steps import ReductionScope, micro_batch_step

log = logging.getLogger("bigrerank.train")


def schedule(num_queries: int, args, shard: Shard) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps)."""
    per_micro = shard.queries_per_micro_step(args.per_device_train_batch_size)
    steps_per_epoch = num_queries // per_micro // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ValueError(f"{num_queries} training queries are fewer than one optimizer step needs "
                         f"({per_micro * args.gradient_accumulation_steps})")
    total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    return steps_per_epoch, total


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only, as Hugging Face does (no decay for biases and norms). A ZeRO-3 parameter is
    an empty placeholder once partitioned: its shape is `ds_shape`."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if len(getattr(param, "ds_shape", param.shape)) < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def loading_dtype(model_args, args) -> dict:
    """A GGUF file is dequantized straight into the engine's dtype (bf16/fp16 with --bf16/--fp16), without a float32
    copy; other models load as saved and the engine casts them."""
    if not is_gguf(model_args.model_name_or_path):
        return {}
    return {"dtype": ds_config.training_dtype(args.bf16, args.fp16)}


def build_engine(model_args, model_config, args, world: int, total_steps: int, raw_config: dict, contract=None,
                 load_universal: bool = False):
    """The DeepSpeed engine around the reranker; `model_config` (the backbone's) fills the config's "auto" sizes;
    `load_universal`: it will resume from a universal checkpoint (checkpoints/universal.py)."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    hidden = getattr(model_config, "hidden_size", None)
    config = ds_config.fill_auto(raw_config, args, world, total_steps, hidden, path=args.ds_config)
    if load_universal:
        config = {**config, "checkpoint": {**config.get("checkpoint", {}), "load_universal": True}}
    # ZeRO-3: while this object lives, from_pretrained partitions the weights as it loads them.
    keep_alive = HfDeepSpeedConfig(config) if ds_config.zero_stage(config) == 3 else None
    model = lora.prepare(load_reranker(model_args.model_name_or_path, model_args.head_init_std, contract,
                                       **loading_dtype(model_args, args)),
                         model_args, args.gradient_checkpointing, args.seed)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, args.weight_decay),
                                      config=config)
    skip_non_finite.guard(engine)
    del keep_alive
    return_freed_memory()  # the loading heap (whole weights before partitioning, conversions) back to the OS
    return engine, config


@dataclass
class TrainingSetup:
    """Everything training is built from, before its first step."""

    engine: object
    config: dict                   # the DeepSpeed config, its "auto" values filled
    tokenizer: object
    contract: object               # how the model scores a pair (contract.ScoringContract), saved beside it
    source: MicroBatchSource
    steps_per_epoch: int
    total_steps: int
    resume_dir: Path | None         # the checkpoint to resume from (checked against this run's settings)
    states_dir: Path | None         # its engine states: resume_dir, or its universal form on another topology
    recorded: dict                 # this run's settings, saved in every checkpoint for resume checks
    eval_set: evaluation.EvalSet | None = None  # the candidates and qrels of evaluation while training


@dataclass
class TrainResult:
    """What `train` leaves: the live engine (for callers that score; the last step's weights, also with
    --load_best_model_at_end), its last step, and whether a preemption signal ended it early (a checkpoint
    written, nothing exported: `main` exits 75 for a requeue)."""

    engine: object
    step: int
    preempted: bool = False


def pair_encoding(model_args, data_args, model_config) -> tuple[object, ScoringContract, PairEncoder]:
    """(tokenizer, scoring contract, pair encoder) training and evaluation encode pairs with; a --max_len that leaves
    the template no room for a query and a passage is a UsageError. Reads no weights."""
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path, model_config)
    contract = resolve_contract(model_args.model_name_or_path, model_config, tokenizer, model_args.score_head,
                                data_args.template, data_args.instruction, data_args.max_len)
    pack_len = row_length(data_args.max_len, data_args.pack_len) if data_args.padding_free else None
    encoder = make_encoder(tokenizer, data_args.max_len, contract, pack_len)
    encoder.require_room("--max_len")
    return tokenizer, contract, encoder


def warn_slow_bf16(args) -> None:
    """On a CPU that emulates bf16, rank 0 says so before training in it (hardware.py)."""
    if args.bf16 and distributed.rank() == 0 and not torch.cuda.is_available():
        warning = hardware.bf16_warning()
        if warning:
            log.warning(warning)


def prepare(model_args, data_args, args) -> TrainingSetup:
    """Validate the inputs, start the ranks, load the data (once per machine) and build the engine."""
    raw_config = ds_config.load(args.ds_config)  # bad input fails here, before any process group starts
    data_files(data_args.train_path)
    model_config = load_config(model_args.model_name_or_path)
    tokenizer, contract, encoder = pair_encoding(model_args, data_args, model_config)
    if model_args.head_init_std is not None:
        contract.head.check_reset()
    if model_args.keep_causal_lm:
        contract.check_keep_causal_lm(model_args.model_name_or_path)
    lora.check_targets(model_args, model_config, contract.head)
    check_training(model_args, data_args, args, raw_config, model_config)  # the memory plan, before the model loads
    resume_dir = output_dir.check(data_args, args, model_config, model_args.model_name_or_path)
    eval_set = evaluation.read_eval_set(args, len(tokenizer))
    distributed.init(args.ddp_timeout)
    warn_slow_bf16(args)
    if resume_dir is not None:  # every file as saved (checksums, the ranks sharing the work), or an older tag
        resume_dir = store.trusted(resume_dir, fall_back=args.resume_from_checkpoint == "latest")
    shard = Shard(distributed.rank(), distributed.world_size(), args.collaborative)
    with_teacher = losses.LOSSES[args.loss].needs_teacher
    dataset = distributed.main_first(  # rank 0 validates and converts once; the others open the cache
        lambda: load_groups(data_args.train_path, vocab_size=len(tokenizer), group_size=data_args.train_group_size,
                            need_scores=with_teacher))
    sampler = GroupSampler(dataset, data_args.train_group_size, args.seed)
    steps_per_epoch, total_steps = schedule(len(sampler), args, shard)
    recorded = resume_check.settings(model_args, data_args, args, shard.world, dataset, raw_config, total_steps)
    resume_check.check(resume_dir, recorded)
    states_dir = resume_dir
    if resume_dir is not None and universal.needs_conversion(resume_dir, shard.world, ds_config.zero_stage(raw_config)):
        states_dir = distributed.main_first(lambda: universal.convert(resume_dir))
    torch.manual_seed(args.seed)  # the same new head on every rank
    engine, config = build_engine(model_args, model_config, args, shard.world, total_steps, raw_config, contract,
                                  load_universal=states_dir != resume_dir)
    torch.manual_seed(args.seed + shard.rank)  # dropout differs across ranks
    if data_args.padding_free:
        check_packing(engine, encoder, engine.device, model_args.model_name_or_path)
    source = MicroBatchSource(sampler, encoder, shard, args.per_device_train_batch_size, args.grad_cache_chunk_size,
                              is_text(dataset), with_teacher, engine.device, args.grad_cache_max_tokens)
    return TrainingSetup(engine, config, tokenizer, contract, source, steps_per_epoch, total_steps, resume_dir,
                         states_dir, recorded, eval_set)


def training_info(model_args, data_args, args, setup: TrainingSetup) -> dict:
    """What the exported model was trained with (written beside it as TRAINING_INFO)."""
    return {"base_model": model_args.model_name_or_path, "loss": args.loss,
            "train_group_size": data_args.train_group_size, "max_len": data_args.max_len,
            "learning_rate": args.learning_rate, "total_steps": setup.total_steps,
            "zero_stage": ds_config.zero_stage(setup.config), "bf16": args.bf16, "fp16": args.fp16,
            "world_size": setup.source.shard.world, "collaborative": args.collaborative,
            "grad_cache_chunk_size": args.grad_cache_chunk_size, "grad_cache_max_tokens": args.grad_cache_max_tokens,
            "padding_free": data_args.padding_free,
            "score_head": setup.contract.score_head, "template": setup.contract.template_name,
            "lora_r": model_args.lora_r, "gradient_checkpointing": args.gradient_checkpointing}


class Checkpoints:
    """This run's checkpoints under <output_dir>/checkpoints: resume from one, save one with the training info (and,
    with evaluation, the best checkpoint's record), pick the one to export."""

    def __init__(self, setup: TrainingSetup, data_args, args, info: dict, best: BestCheckpoint | None = None):
        self.setup, self.data_args, self.args, self.info, self.best = setup, data_args, args, info, best
        self.root = Path(args.output_dir) / "checkpoints"

    def resume(self) -> int:
        """The step to start from: the resumed checkpoint's (model, optimizer, schedule, RNG restored), or 0."""
        resume_dir = self.setup.resume_dir
        if not resume_dir:
            return 0
        step = store.load(self.setup.engine, resume_dir, self.setup.states_dir)["step"]
        if self.setup.states_dir != resume_dir:
            universal.separate_steps(self.setup.engine)
        log.info("resumed from %s at step %d", resume_dir, step)
        return step

    def save(self, step: int) -> Path:
        client, info = {"step": step, **self.setup.recorded}, {**self.info, "step": step}
        if self.best is not None:
            client[CLIENT_KEY] = self.best.checkpointed(step)
            metrics = self.best.metrics_at(step)
            if metrics:  # the evaluation at this step, carried into the export's TRAINING_INFO
                info["eval"] = metrics
        engine = self.setup.engine
        return store.save(engine, self.root, step, client, engine.module.config, self.setup.tokenizer,
                          self.args.save_total_limit,
                          hf_files={TRAINING_INFO: json.dumps(info, indent=1),
                                    CONTRACT_FILE: self.setup.contract.to_json(),
                                    **lora.checkpoint_files(engine.module)},
                          protect=self.best.tag if self.best is not None else None)

    def to_export(self, final: Path) -> Path:
        """The checkpoint the run exports: the final one, or with --load_best_model_at_end the best one."""
        if not self.args.load_best_model_at_end or self.best is None or self.best.step is None:
            return final
        best_dir = self.root / self.best.tag
        reason = store.incomplete_reason(best_dir) if best_dir.is_dir() else "it is gone"
        if reason:
            log.warning("--load_best_model_at_end: the best checkpoint %s cannot be exported (%s): exporting the "
                        "last one, %s", best_dir, reason, final.name)
            return final
        log.info("--load_best_model_at_end: exporting the best checkpoint, step %d (%s %.6g)", self.best.step,
                 self.best.metric, self.best.value)
        return best_dir


class NonFiniteSteps:
    """Counts optimizer steps in a row whose loss was not finite; stops the run at --max_nonfinite_steps."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row = limit, 0

    def record(self, step: int, finite: bool) -> None:
        self.in_a_row = 0 if finite else self.in_a_row + 1
        if finite:
            return
        log.warning("step %d: non-finite loss; its micro-batches were skipped (%d in a row)", step, self.in_a_row)
        if self.in_a_row >= self.limit:
            raise RuntimeError(f"{self.in_a_row} optimizer steps in a row had a non-finite loss "
                               f"(--max_nonfinite_steps {self.limit}); stopping without saving")


def open_train_log(args, step: int, info: dict) -> TrainLog | None:
    """Rank 0's train_log.jsonl (kept up to a resumed step), with a wandb run when --report_to wandb."""
    if not distributed.is_main():
        return None
    out = Path(args.output_dir)
    wandb_run = start_wandb(args, out, {**asdict(args), **info}) if args.report_to == "wandb" else None
    return TrainLog(out / output_dir.TRAIN_LOG, step, wandb_run)


def _before_update(on_reduced, progress: Progress, next_step: int, engine) -> None:
    if on_reduced is not None:
        on_reduced(engine)
    progress.before_update(engine, next_step)


def data_worker(setup: TrainingSetup, step: int, args) -> Prefetcher:
    """The micro-batches from `step` on, drawn and tokenized --prefetch_micro_batches ahead in a background thread
    (with its own copy of the tokenizer: evaluation tokenizes on the training thread meanwhile)."""
    source = setup.source
    worker_source = replace(source, encoder=copy.deepcopy(source.encoder)) if args.prefetch_micro_batches else source
    positions = micro_positions(step, setup.total_steps, args.gradient_accumulation_steps, setup.steps_per_epoch)
    return Prefetcher(partial(draw_groups, worker_source), positions, args.prefetch_micro_batches)


def train(model_args, data_args, args, on_reduced=None) -> TrainResult:
    """Train and export into --output_dir; the result holds the DeepSpeed engine (still live, for callers that score).

    `on_reduced(engine)` (optional) sees each step's reduced gradients before the update. SIGUSR1/SIGTERM end
    the run after the current step with a checkpoint, and a result that says it was preempted.
    """
    setup = prepare(model_args, data_args, args)
    engine, total_steps, accum = setup.engine, setup.total_steps, args.gradient_accumulation_steps
    info = training_info(model_args, data_args, args, setup)
    evaluator = (evaluation.Evaluator(setup.eval_set, setup.source.encoder, args, total_steps, setup.resume_dir)
                 if setup.eval_set is not None else None)
    checkpoints = Checkpoints(setup, data_args, args, info, evaluator.best if evaluator else None)
    step = checkpoints.resume()
    output_dir.clear_previous(args)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    train_log = open_train_log(args, step, info)
    loss_fn = losses.LOSSES[args.loss].fn
    preemption = Preemption()
    try:
        progress = Progress(args, setup.steps_per_epoch, total_steps, step, train_log,
                            zero0=ds_config.zero_stage(setup.config) == 0)
        nonfinite = NonFiniteSteps(args.max_nonfinite_steps)
        batches = data_worker(setup, step, args)
        while step < total_steps:
            step_finite = True
            with ReductionScope(engine, accum, partial(_before_update, on_reduced, progress, step + 1)) as scope:
                for _ in range(accum):
                    waited = batches.wait_s
                    micro = micro_batch(setup.source, batches.next())
                    result = micro_batch_step(engine, micro, loss_fn, scope.backward, temperature=args.temperature)
                    if not result.finite:
                        step_finite = False
                        scope.skip_micro_batch()
                    progress.add(micro, result, data_wait=batches.wait_s - waited)
            step += 1
            nonfinite.record(step, step_finite)
            progress.step_done(engine, step, evaluator.maybe_evaluate(engine, step) if evaluator else None)

            if preemption.any_rank() and step < total_steps:
                checkpoints.save(step)
                progress.close()
                log.warning("checkpoint at step %d written after a preemption signal; stopping for a requeue", step)
                return TrainResult(engine, step, preempted=True)
            if step % args.save_steps == 0 and step < total_steps:
                checkpoints.save(step)
        progress.close()

        final = checkpoints.save(step)
        if distributed.is_main():
            export = checkpoints.to_export(final)
            consolidate(export, Path(args.output_dir), keep_causal_lm=model_args.keep_causal_lm,
                        adapter_only=model_args.adapter_only, verify=export != final,
                        max_shard_size=model_args.max_shard_size, export_dtype=model_args.export_dtype)
            if train_log is not None:
                train_log.finish()
        distributed.barrier()
        return TrainResult(engine, step)
    finally:
        if "batches" in locals():
            batches.close()
        preemption.restore()
