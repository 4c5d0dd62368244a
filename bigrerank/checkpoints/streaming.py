"""A DeepSpeed checkpoint's weights read one tensor at a time, and written as transformers' sharded safetensors.

`checkpoint_weights` maps each weight name to a `Lazy` tensor: its shape, and how to build it in fp32 from the
checkpoint files, which are memory-mapped (`torch.load(mmap=True)`), never read whole. ZeRO-3 weights are
gathered from every rank's flat fp32 partition (DeepSpeed's `GatheredTensor`); ZeRO-1/2 weights are sliced out of
the ranks' partitions of their group; frozen weights (LoRA's base) come from the module files; ZeRO-0 in
bf16/fp16 takes the optimizer's fp32 master copies. `merged_lora` turns a peft state into the plain model's, one
adapted weight at a time (W + scale * B @ A). `write_safetensors` plans the shards from the shapes, then builds
and writes one shard at a time (`safetensors.torch.save_file`), with `model.safetensors.index.json` when there
are several. Peak memory: one output shard and the largest tensor's fp32 sources, not the model.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable

import torch

from .store import read_manifest

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


class Lazy:
    """A tensor of known shape and dtype, built when called."""

    def __init__(self, shape, dtype: torch.dtype, build: Callable[[], torch.Tensor]):
        self.shape, self.dtype, self._build = torch.Size(shape), dtype, build

    def __call__(self) -> torch.Tensor:
        return self._build()

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "Lazy":
        return cls(tensor.shape, tensor.dtype, lambda: tensor)


def as_fp32(tensor: torch.Tensor) -> Lazy:
    """A lazy fp32 copy of a (memory-mapped) floating-point tensor; other tensors as they are."""
    if not tensor.is_floating_point():
        return Lazy.of(tensor)
    return Lazy(tensor.shape, torch.float32, lambda: tensor.float().view(tensor.shape))


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _files(tag_dir: Path, pattern: str) -> list[Path]:
    return sorted(tag_dir.glob(pattern), key=_natural_key)


def checkpoint_weights(root: Path, tag: str) -> dict[str, Lazy]:
    """{name: lazy fp32 weight} of every parameter and buffer the checkpoint holds."""
    tag_dir = root / tag
    optim_files = _files(tag_dir, "*zero_pp_rank_*_optim_states.pt")
    optim = [_load(path)["optimizer_state_dict"] for path in optim_files]
    stage = optim[0].get("zero_stage", 0) if optim and isinstance(optim[0], dict) else 0
    if stage == 3:
        return _zero3_weights(tag_dir, optim)
    module_states = _load(tag_dir / "mp_rank_00_model_states.pt")
    weights = {name: as_fp32(tensor) for name, tensor in module_states["module"].items()}
    if stage in (1, 2):
        weights.update(_zero12_weights(module_states, optim))
    else:  # ZeRO-0 in bf16/fp16: the optimizer's fp32 masters, not the module's 16-bit copies
        group_names = read_manifest(tag_dir).get("master_weight_groups")
        weights.update(_master_weights(module_states.get("optimizer"), group_names, weights))
    return weights


def _span(parts: list[torch.Tensor], start: int, numel: int) -> torch.Tensor:
    """Elements [start, start + numel) of the concatenation of `parts`, copying only those."""
    pieces, base = [], 0
    for part in parts:
        low, high = max(start - base, 0), min(start + numel - base, part.numel())
        if low < high:
            pieces.append(part[low:high])
        base += part.numel()
    return torch.cat(pieces).float()


def _zero12_weights(module_states: dict, optim: list[dict]) -> dict[str, Lazy]:
    """ZeRO-1/2: each group's fp32 weights are the ranks' partitions end to end, each weight after the previous
    one (and its alignment padding)."""
    paddings = optim[0].get("param_alignment_paddings")
    weights = {}
    for group, shapes in enumerate(module_states["param_shapes"]):
        parts = [state["single_partition_of_fp32_groups"][group] for state in optim]
        offset = 0
        for index, (name, shape) in enumerate(shapes.items()):
            numel = math.prod(shape)
            weights[name] = Lazy(shape, torch.float32, lambda parts=parts, offset=offset, numel=numel, shape=shape:
                                 _span(parts, offset, numel).view(shape))
            offset += numel + (paddings[group][index] if paddings is not None else 0)
    for alias, target in module_states.get("shared_params", {}).items():
        if target in weights:
            weights[alias] = weights[target]
    return weights


def _zero3_weights(tag_dir: Path, optim: list[dict]) -> dict[str, Lazy]:
    """ZeRO-3: a trainable weight is its equal slices of every rank's flat fp32 group, end to end; a frozen one is
    its fragments of every rank's module file, end to end; buffers are whole in rank 0's module file."""
    from deepspeed.utils.zero_to_fp32 import GatheredTensor, zero3_partitioned_param_info

    states = [_load(path) for path in _files(tag_dir, "*_model_states.pt")]
    world = len(optim)
    first = states[0]
    weights = {name: as_fp32(tensor) for name, tensor in first["module"].items() if name in first["buffer_names"]}
    flat_groups = [state["fp32_flat_groups"] for state in optim]
    group_offsets = [0]
    for flat in flat_groups[0]:
        group_offsets.append(group_offsets[-1] + flat.numel())
    offset = 0
    for name, shape in ((n, s) for shapes in first["param_shapes"] for n, s in shapes.items()):
        partition, _ = zero3_partitioned_param_info(shape.numel(), world)
        gathered = GatheredTensor(flat_groups, group_offsets, offset, partition, shape)
        weights[name] = Lazy(shape, torch.float32, lambda g=gathered: g.contiguous().float())
        offset += partition
    for name, shape in (first.get("frozen_param_shapes") or {}).items():
        fragments = [state["frozen_param_fragments"][name] for state in states]
        weights[name] = Lazy(shape, torch.float32, lambda f=fragments, shape=shape: _span(f, 0, shape.numel())
                             .view(shape))
    for alias, target in first.get("shared_params", {}).items():
        if target in weights:
            weights[alias] = weights[target]
    return weights


def _master_weights(optimizer_state, group_names: list[list[str]] | None, module: dict) -> dict[str, Lazy]:
    """ZeRO-0 in bf16/fp16: {name: fp32 master weight} from DeepSpeed's mixed-precision optimizer state
    (a tensor per parameter, or one flat tensor per group, in the group's parameter order)."""
    if not group_names or not isinstance(optimizer_state, dict):
        return {}
    groups = optimizer_state.get("fp32_groups")
    if groups is None and optimizer_state.get("fp32_groups_flat") is not None:
        groups = [flat.split([module[name].shape.numel() for name in names])
                  for names, flat in zip(group_names, optimizer_state["fp32_groups_flat"], strict=True)]
    masters = {}
    for names, tensors in zip(group_names, groups or [], strict=True):
        masters.update((name, as_fp32(t.view(module[name].shape))) for name, t in zip(names, tensors, strict=True))
    return masters


def merged_lora(weights: dict[str, Lazy], adapter_config: dict) -> dict[str, Lazy]:
    """A peft LoRA state ({`base_model.model.…`: lazy tensor}) as the plain model's, each adapted weight merged
    when it is built: W + scale * B @ A (transposed for fan-in-fan-out layers); a fully trained module's copy
    (`modules_to_save`) replaces its original."""
    unsupported = [key for key in ("use_dora", "lora_bias", "rank_pattern", "alpha_pattern") if adapter_config.get(key)]
    if unsupported:
        raise ValueError(f"LoRA export does not support {', '.join(unsupported)}")
    r = adapter_config["r"]
    scale = adapter_config["lora_alpha"] / (math.sqrt(r) if adapter_config.get("use_rslora") else r)
    transpose = bool(adapter_config.get("fan_in_fan_out"))
    prefix, plain = "base_model.model.", {}
    for name, tensor in weights.items():
        key = name.removeprefix(prefix)
        if ".lora_" in key or ".original_module." in key:
            continue
        if ".modules_to_save.default." in key:
            plain[key.replace(".modules_to_save.default.", ".")] = tensor
        elif ".base_layer." in key:
            module = key.split(".base_layer.")[0]
            lora_a, lora_b = (weights.get(f"{prefix}{module}.lora_{ab}.default.weight") for ab in "AB")
            merged = key.endswith(".weight") and lora_a is not None and lora_b is not None
            plain[key.replace(".base_layer.", ".")] = (
                Lazy(tensor.shape, tensor.dtype, lambda w=tensor, a=lora_a, b=lora_b: _merge(w(), a(), b(), scale,
                                                                                             transpose))
                if merged else tensor)
        else:
            plain.setdefault(key, tensor)
    return plain


def _merge(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float, transpose: bool):
    delta = lora_b @ lora_a
    return weight + (delta.T if transpose else delta) * scale


def export_names(model) -> list[str]:
    """The keys `save_pretrained` writes for `model` (built on meta): its state dict less tied duplicates."""
    params = dict(model.named_parameters(remove_duplicate=False))
    unique = {id(p): name for name, p in reversed(list(model.named_parameters()))}
    return [name for name in model.state_dict() if name not in params or unique.get(id(params[name])) == name]


def shard_plan(sizes: dict[str, int], max_shard_size: int) -> list[list[str]]:
    """Names grouped into shards in order, as transformers groups them: a new shard when the next tensor would
    pass `max_shard_size`; a tensor larger than that alone in its own."""
    shards, current, total = [], [], 0
    for name, size in sizes.items():
        if current and total + size > max_shard_size:
            shards.append(current)
            current, total = [], 0
        current.append(name)
        total += size
    return [*shards, current] if current else shards


def write_safetensors(weights: dict[str, Lazy | torch.Tensor], names: list[str], folder: Path, dtype: torch.dtype,
                      max_shard_size: int, on_shard: Callable[[], None] = lambda: None) -> list[str]:
    """Write `names` of `weights` (lazy or built; floating point ones as `dtype`) into `folder` as transformers'
    safetensors files, one shard built, written and freed at a time (`on_shard` after each); the files' names."""
    from safetensors.torch import save_file

    weights = {name: value if isinstance(value, Lazy) else Lazy.of(value) for name, value in weights.items()}
    missing = [name for name in names if name not in weights]
    if missing:
        raise ValueError(f"checkpoint weights lack {len(missing)} tensors of the model, e.g. {missing[:3]}")

    def out_dtype(lazy: Lazy) -> torch.dtype:
        return dtype if lazy.dtype.is_floating_point else lazy.dtype

    sizes = {name: weights[name].shape.numel() * out_dtype(weights[name]).itemsize for name in names}
    shards = shard_plan(sizes, max_shard_size)
    files = ([SAFE_WEIGHTS] if len(shards) == 1 else
             [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
    for file, shard in zip(files, shards):
        with torch.no_grad():
            tensors = {name: weights[name]().detach().to(out_dtype(weights[name])).contiguous() for name in shard}
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        del tensors
        on_shard()
    if len(files) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())},
                 "weight_map": {name: file for file, shard in zip(files, shards) for name in shard}}
        (folder / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return files
