"""A resume continues the saved run, or is refused: the settings a checkpoint records against the current ones.

The one list of what may change on a resume is here. Everything a run records that is not in `MAY_CHANGE`
or `NOT_COMPARED` is refused when it differs, because it breaks the exact resume:
- the model, tokenizer and new head (`model_name_or_path`, `tokenizer_name`, `head_init_std`);
- the data and its sampling: `train_path`, its content (`training_queries`, `data_fingerprint`: the
  `datasets` fingerprint of the converted data), `train_group_size`, `max_len`, `seed`,
  `per_device_train_batch_size`, `gradient_accumulation_steps`, `world_size` (queries per step, each
  rank's RNG stream, ZeRO partitions), `collaborative`, `grad_cache_chunk_size`, `grad_cache_max_tokens`,
  `padding_free`, `pack_len` (dropout draws);
- the loss (`loss`, `temperature`) and the update: `learning_rate`, the schedule (`total_steps` and
  `warmup_num_steps`, as `--max_steps`/`--num_train_epochs` and `--warmup_steps`/`--warmup_ratio` give
  them), AdamW (`weight_decay`, `adam_beta1/2`, `adam_epsilon`),
  `max_grad_norm`, precision (`bf16`, `fp16`) and the DeepSpeed engine (`zero_stage`, `offload_optimizer`,
  `offload_param`, `optimizer`: the config's optimizer type; its other values come from the arguments).
The topology (`world_size`, `zero_stage`, `per_device_train_batch_size`, `gradient_accumulation_steps`: `TOPOLOGY`)
may change when the queries per optimizer step stay the same (checkpoints/universal.py converts the states).
Settings that only change what is logged, saved or waited for are allowed, with a warning (`MAY_CHANGE`); so
are the evaluation settings (`EVAL_SETTINGS`): evaluation leaves the training unchanged. A best checkpoint
recorded under other eval inputs or another metric is not carried over (checkpoints/best.py).
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from ..checkpoints import store
from ..ds_config import warmup_steps
from ..errors import InputError
from .evaluation import JUDGED_BY

log = logging.getLogger(__name__)
EVAL_SETTINGS = (*JUDGED_BY, "eval_steps", "per_device_eval_batch_size", "metric_for_best_model",
                 "load_best_model_at_end")
MAY_CHANGE = frozenset({"output_dir", "ds_config", "logging_steps", "save_steps", "save_total_limit", "report_to",
                        "run_name", "max_nonfinite_steps", "ddp_timeout", "prefetch_micro_batches",
                        "max_shard_size", "export_dtype",
                        *EVAL_SETTINGS})
TOPOLOGY = frozenset({"world_size", "zero_stage", "per_device_train_batch_size", "gradient_accumulation_steps"})
NOT_COMPARED = frozenset({"resume_from_checkpoint", "overwrite_output_dir", "local_rank",
                          "max_steps", "num_train_epochs", "warmup_steps", "warmup_ratio"})  # as the schedule


def _offload(zero: dict, key: str) -> str:
    return str((zero.get(key) or {}).get("device", "none"))


def settings(model_args, data_args, args, world_size: int, dataset, ds_config: dict, total_steps: int) -> dict:
    """What a checkpoint records of its run (JSON): the arguments, and what they do not show."""
    zero = ds_config.get("zero_optimization", {})
    optimizer = ds_config.get("optimizer") or {}
    engine = {"zero_stage": zero.get("stage", 0), "offload_optimizer": _offload(zero, "offload_optimizer"),
              "offload_param": _offload(zero, "offload_param"),
              "optimizer": f"{optimizer.get('type')} (torch_adam={optimizer.get('params', {}).get('torch_adam')})"}
    return {"model": asdict(model_args), "data": asdict(data_args), "args": asdict(args),
            "run": {"world_size": world_size, "training_queries": len(dataset), "total_steps": total_steps,
                    "warmup_num_steps": warmup_steps(args, total_steps),
                    "data_fingerprint": getattr(dataset, "_fingerprint", None), **engine}}


def _flat(recorded: dict) -> dict:
    return {key: value for part in ("model", "data", "args", "run") for key, value in recorded.get(part, {}).items()}


def queries_per_step(flat: dict) -> int:
    """Queries one optimizer step trains on: batch x accumulation x ranks (a collaborative group spans the ranks)."""
    ranks = 1 if flat["collaborative"] else flat["world_size"]
    return flat["per_device_train_batch_size"] * flat["gradient_accumulation_steps"] * ranks


def check_topology(resume_dir: Path, old: dict, new: dict) -> None:
    """Another world size, ZeRO stage, batch or accumulation resumes only with the saved queries per step."""
    before, after = queries_per_step(old), queries_per_step(new)
    if before == after:
        return
    ranks = 1 if new["collaborative"] else new["world_size"]
    per_micro = new["per_device_train_batch_size"] * ranks
    fix = (f"--gradient_accumulation_steps {before // per_micro}" if before % per_micro == 0
           else "a batch and accumulation that give as many")
    raise InputError(resume_dir, f"resuming on another topology keeps the queries per optimizer step: the saved run "
                                 f"took {before} (batch x accumulation x ranks), this one {after}: use {fix}")


def check(resume_dir: Path | None, current: dict) -> None:
    """Refuse a resume whose settings break exactness (one line naming each, old -> new); warn for the rest."""
    if resume_dir is None:
        return
    recorded = store.read_manifest(resume_dir).get("client_state")
    if not isinstance(recorded, dict) or "args" not in recorded:
        log.warning("%s records no settings (an older checkpoint): they are not compared on this resume", resume_dir)
        return
    old, new = _flat(recorded), _flat(current)
    changed = sorted(key for key in (old.keys() & new.keys()) - NOT_COMPARED if old[key] != new[key])
    refused = [key for key in changed if key not in MAY_CHANGE | TOPOLOGY]
    if refused:
        what = "; ".join(f"{key} {old[key]!r} -> {new[key]!r}" for key in refused)
        raise InputError(resume_dir, f"resuming with other settings would not continue the saved run: {what} "
                                     "(resume with the saved settings, or start a new run in another --output_dir)")
    if TOPOLOGY & set(changed):
        check_topology(resume_dir, old, new)
    for key in changed:
        why = ("another topology, the same queries per step" if key in TOPOLOGY
               else "it does not change the training")
        log.warning("resuming with %s %r -> %r (allowed: %s)", key, old[key], new[key], why)
