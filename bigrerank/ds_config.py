"""DeepSpeed config: the packaged configs, loading a JSON file and filling its "auto" values from the training flags.

As in Hugging Face's DeepSpeed integration, every value a user normally sets on the command line may
be "auto" in the file; an explicit value that contradicts the command line is an error naming both.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch

from .errors import InputError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # a precision's name -> its dtype


def training_dtype(bf16: bool, fp16: bool) -> torch.dtype:
    """The dtype a run trains its weights in, from its --bf16/--fp16 flags."""
    return torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32

# shipped as package data; the repository's ds_configs links here
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "ds_configs"


def locate(path) -> Path:
    """`path` itself when it exists; a relative `ds_configs/NAME` or `NAME` that does not is the packaged config of
    that name (so the default `ds_configs/zero2.json` is found wherever the command runs)."""
    path = Path(path)
    if path.exists() or path.is_absolute() or path.parent not in (Path("."), Path("ds_configs")):
        return path
    packaged = PACKAGED_CONFIGS / path.name
    return packaged if packaged.is_file() else path


def load(path) -> dict:
    """Parse a DeepSpeed JSON config (see `locate`), with a located error for a missing or malformed file."""
    path = locate(path)
    if not path.is_file():
        raise InputError(path, "DeepSpeed config not found (--ds_config)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(path, f"malformed JSON ({e.msg}, column {e.colno})", e.lineno) from None
    if not isinstance(config, dict):
        raise InputError(path, "expected a JSON object at the top level")
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise InputError(path, f"expected an object, got {json.dumps(zero)}", field="zero_optimization")
    stage = zero.get("stage", 0)
    if type(stage) is not int or stage not in ZERO_STAGES:
        raise InputError(path, f"the ZeRO stage must be 0, 1, 2 or 3, got {json.dumps(stage)}",
                         field="zero_optimization.stage")
    return config


ZERO_STAGES = (0, 1, 2, 3)
BUCKET_KEYS = ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold")


def warmup_steps(args, total_steps: int) -> int:
    """--warmup_steps, else --warmup_ratio of the total; at least 1 (DeepSpeed's schedulers require it)."""
    return max(1, args.warmup_steps if args.warmup_steps > 0 else math.ceil(args.warmup_ratio * total_steps))


def _wanted_values(args, world_size: int, total_steps: int, hidden_size: int | None) -> dict[tuple[str, ...], object]:
    """Command-line value of every key that may be "auto", by key path; the argument named for errors."""
    micro, accum = args.per_device_train_batch_size, args.gradient_accumulation_steps
    values = {
        ("train_micro_batch_size_per_gpu",): (micro, "--per_device_train_batch_size"),
        ("gradient_accumulation_steps",): (accum, "--gradient_accumulation_steps"),
        ("train_batch_size",): (micro * accum * world_size,
                                "--per_device_train_batch_size x --gradient_accumulation_steps x world size"),
        ("gradient_clipping",): (args.max_grad_norm, "--max_grad_norm"),
        ("optimizer", "params", "lr"): (args.learning_rate, "--learning_rate"),
        ("optimizer", "params", "betas"): ([args.adam_beta1, args.adam_beta2], "--adam_beta1/--adam_beta2"),
        ("optimizer", "params", "eps"): (args.adam_epsilon, "--adam_epsilon"),
        ("optimizer", "params", "weight_decay"): (args.weight_decay, "--weight_decay"),
        ("scheduler", "params", "warmup_max_lr"): (args.learning_rate, "--learning_rate"),
        ("scheduler", "params", "warmup_num_steps"): (warmup_steps(args, total_steps), "--warmup_steps/--warmup_ratio"),
        ("scheduler", "params", "total_num_steps"): (total_steps, "--max_steps/--num_train_epochs"),
        ("fp16", "enabled"): (args.fp16, "--fp16"),
        ("bf16", "enabled"): (args.bf16, "--bf16"),
    }
    if hidden_size:
        values.update({
            ("zero_optimization", "reduce_bucket_size"): (hidden_size * hidden_size, "the model's hidden size"),
            ("zero_optimization", "stage3_prefetch_bucket_size"): (int(0.9 * hidden_size * hidden_size),
                                                                   "the model's hidden size"),
            ("zero_optimization", "stage3_param_persistence_threshold"): (10 * hidden_size, "the model's hidden size"),
        })
    return values


def _lookup(config: dict, keys: tuple[str, ...]):
    node = config
    for key in keys[:-1]:
        node = node.get(key)
        if not isinstance(node, dict):
            return None, None
    return node, keys[-1]


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


def fill_auto(config: dict, args, world_size: int, total_steps: int, hidden_size: int | None = None,
              path: str = "ds_config") -> dict:
    """A copy of `config` with every "auto" filled in; explicit values must agree with the arguments."""
    config = copy.deepcopy(config)
    config.setdefault("train_micro_batch_size_per_gpu", "auto")
    config.setdefault("gradient_accumulation_steps", "auto")
    config.setdefault("train_batch_size", "auto")
    for keys, (wanted, argument) in _wanted_values(args, world_size, total_steps, hidden_size).items():
        node, key = _lookup(config, keys)
        if node is None or key not in node:
            continue
        if node[key] == "auto":
            node[key] = wanted
        elif keys[0] != "zero_optimization" and not _same(node[key], wanted):  # bucket sizes are free
            raise InputError(path, f"is {json.dumps(node[key])} but {argument} gives {json.dumps(wanted)}; "
                             "set it to \"auto\" or make them agree", field=".".join(keys))
    zero = config.get("zero_optimization", {})
    for key in [k for k, v in zero.items() if v == "auto" and k in BUCKET_KEYS]:
        del zero[key]  # no hidden size known: DeepSpeed's defaults
    leftover = _find_auto(config)
    if leftover:
        raise InputError(path, "\"auto\" is not supported here (no command-line value fills it)", field=leftover)
    _check_precision(config, path)
    return config


def _find_auto(node, prefix: str = "") -> str | None:
    if isinstance(node, dict):
        for key, value in node.items():
            found = _find_auto(value, f"{prefix}{key}.") if isinstance(value, (dict, list)) else (
                f"{prefix}{key}" if value == "auto" else None)
            if found:
                return found
    return None


def _check_precision(config: dict, path: str) -> None:
    fp16 = bool(config.get("fp16", {}).get("enabled", False))
    bf16 = bool(config.get("bf16", {}).get("enabled", False))
    if fp16 and bf16:
        raise InputError(path, "fp16 and bf16 cannot both be enabled", field="fp16.enabled")
    if fp16 and not torch.cuda.is_available():
        raise InputError(path, "fp16 needs a GPU (DeepSpeed refuses fp16 on CPU); use --bf16 on CPU",
                         field="fp16.enabled")


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))
