"""LoRA adapters (peft) and gradient checkpointing on the reranker's backbone, and a LoRA checkpoint's export.

With `--lora_r R` the engine trains a peft model: low-rank adapters on every linear projection of the
attention and MLP blocks (or `--lora_target_modules`), everything else frozen but the head of a `classifier`
contract, trained in full (`modules_to_save`, peft's SEQ_CLS task). A `yes_no` model is peft's CAUSAL_LM task:
only the adapters train; the answer rows of the LM head stay frozen (with tied embeddings they are embedding
rows), as in FlagEmbedding's and Qwen3-Reranker's LoRA recipes. Checkpoints hold peft's keys
(`base_model.model.…`, `…lora_A.default.weight`) beside the `adapter_config.json` in their `hf/` folder (its
`task_type` says which model class the adapter goes on); the export merges them tensor by tensor
(`checkpoints.streaming.merged_lora`) or saves the adapter itself (`trained_peft_model`).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from . import heads
from .errors import InputError

ADAPTER_CONFIG = "adapter_config.json"


def _linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return torch.nn.Linear, Conv1D


def block_projections(model: torch.nn.Module) -> list[str]:
    """Every linear projection inside the repeated blocks (attention and MLP), named from the block on.

    E.g. `self_attn.q_proj`, `mlp.down_proj` (Llama, Qwen), `attention.self.query`, `intermediate.dense`
    (BERT): read off the model's modules, so any architecture gets all of its own; the head and poolers,
    which sit outside the numbered blocks, are not among them.
    """
    names = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        block = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        if block is not None and block + 1 < len(parts) and isinstance(module, _linear_types()):
            names.add(".".join(parts[block + 1:]))
    return sorted(names)


def check_targets(model_args, model_config, head: heads.ScoreHead = heads.CLASSIFIER) -> None:
    """Refuse --lora_target_modules the model does not have, before any process group starts: the model `head`
    trains (built on `meta`) without the modules LoRA may not adapt (the yes_no LM head)."""
    if model_args.lora_r == 0:
        return
    model = head.on_meta(copy.deepcopy(model_config))
    excluded = head.untargetable(model)
    for target in model_args.lora_target_modules or []:
        matched = [module for name, module in model.named_modules() if name == target or name.endswith("." + target)]
        if not matched:
            problem = f"the model has no module '{target}'"
        elif all(module in excluded for module in matched):
            problem = f"'{target}' is in the {head.name} score head, which LoRA does not adapt: {head.untargetable_why}"
        else:
            continue
        raise InputError(model_args.model_name_or_path, f"--lora_target_modules: {problem} (its block projections: "
                                                        f"{', '.join(block_projections(model))})")


def lora_config(model, model_args):
    from peft import LoraConfig

    return LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                      target_modules=model_args.lora_target_modules or block_projections(model),
                      task_type=heads.carried_by(model).peft_task,
                      base_model_name_or_path=model_args.model_name_or_path)


def prepare(model, model_args, gradient_checkpointing: bool, seed: int):
    """The module the engine trains: the model itself, or its peft wrapper (adapters drawn from `seed`);
    in training mode, with non-reentrant gradient checkpointing when asked."""
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if model_args.lora_r > 0:
        from peft import get_peft_model

        torch.manual_seed(seed)
        # adapters in the base weights' dtype: ZeRO-3 partitions (bf16 under --bf16) must share one dtype
        model = get_peft_model(model, lora_config(model, model_args), autocast_adapter_dtype=False)
    model.train()
    return model


def checkpoint_files(module) -> dict[str, str]:
    """{file name: text} a checkpoint's `hf/` folder needs to rebuild `module`: the adapter config, if any."""
    peft_config = getattr(module, "peft_config", None)
    if not peft_config:
        return {}
    return {ADAPTER_CONFIG: json.dumps(peft_config["default"].to_dict(), indent=1,
                                       default=lambda value: sorted(value) if isinstance(value, set) else str(value))}


def is_lora(hf_dir) -> bool:
    return (Path(hf_dir) / ADAPTER_CONFIG).is_file()


def adapter_config(hf_dir) -> dict:
    """The checkpoint's peft adapter config, as saved."""
    return json.loads((Path(hf_dir) / ADAPTER_CONFIG).read_text())


def is_adapter_weight(name: str) -> bool:
    """Whether a peft state dict key is what the adapter itself holds: a LoRA matrix or a fully trained module."""
    return ".lora_" in name or ".modules_to_save." in name


def trained_peft_model(config, hf_dir, state_dict: dict, base: bool = True):
    """The checkpoint's peft model, its tensors those of `state_dict` (assigned, not copied): the model of the head
    its task type names (a yes_no adapter's causal LM keeps its full LM head). Without `base`, only the adapter's
    own weights (`is_adapter_weight`) are needed and the base stays on `meta`: enough to save the adapter."""
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig.from_pretrained(str(hf_dir))
    model_on_meta = heads.for_peft_task(peft_config.task_type).on_meta(config)
    with torch.device("meta"):
        model_on_meta.name_or_path = peft_config.base_model_name_or_path  # the base it was trained from
        model = get_peft_model(model_on_meta, peft_config)
    model.load_state_dict(state_dict, strict=False, assign=True)
    missing = [name for name, param in model.named_parameters()
               if param.is_meta and (base or is_adapter_weight(name))]
    if missing:
        raise ValueError(f"checkpoint weights lack {len(missing)} tensors of the LoRA model, e.g. {missing[:3]}")
    return model
