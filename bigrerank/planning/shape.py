"""The sizes of a model that memory depends on, read off its config with the model built on `meta` (no weights).

Parameter counts (total, trainable under LoRA, the largest module, every tensor's size) come from the very
module training builds: `AutoModelForSequenceClassification` (score head `classifier`) or
`AutoModelForCausalLM` (`yes_no`, whose score reads 2 rows of the LM head), wrapped by peft when LoRA is on.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError

SCORE_HEADS = ("classifier", "yes_no")
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class ModelShape:
    total_params: int
    trainable_params: int
    largest_module_params: int       # the most parameters one module owns directly (ZeRO-3 gathers it whole)
    param_sizes: tuple[int, ...]     # every parameter tensor's element count
    trainable_sizes: tuple[int, ...]  # the trainable ones'
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rms_norm: bool                   # decoder family (Llama/Qwen/Gemma): RMSNorm, gated MLP, RoPE
    gated_mlp: bool
    qk_norm: bool                    # Qwen3: RMSNorm on every head's q and k
    attention: str                   # "eager" or "sdpa" (what the model runs)
    hidden_dropout: float
    attention_dropout: float
    checkpoint_bytes: int            # bytes per weight as stored (config dtype; float32 when unset)
    score_head: str = "classifier"
    lora_inputs_per_layer: int = 0   # LoRA: summed input width of one block's adapted projections
    lora_adapters_per_layer: int = 0
    lora_outputs_per_layer: int = 0  # LoRA: summed output width of the same projections
    lora_rank: int = 0
    lora_dropout: float = 0.0


def read_config(name_or_path: str):
    """A model directory (or hub name) or a config.json file -> its transformers config."""
    from transformers import AutoConfig

    from ..model import load_config

    path = Path(name_or_path)
    if not path.is_file():
        return load_config(name_or_path)
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not a JSON model config ({e})") from None
    if not isinstance(values, dict) or "model_type" not in values:
        raise InputError(path, "a model config needs a JSON object with a 'model_type'", field="model_type")
    try:
        return AutoConfig.for_model(values.pop("model_type"), **values)
    except (KeyError, ValueError) as e:
        raise InputError(path, f"unknown model type ({str(e).splitlines()[0]})", field="model_type") from None


def _build(config, score_head: str, model_args):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from .. import lora

    with torch.device("meta"):
        if score_head == "yes_no":
            model = AutoModelForCausalLM.from_config(config)
        else:
            config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(config)
        if model_args is not None and model_args.lora_r > 0:
            from peft import get_peft_model

            model = get_peft_model(model, lora.lora_config(model, model_args))
    return model


def _names(model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}


def _lora_block(model) -> tuple[int, int, int]:
    """(summed input width, count, summed output width) of the LoRA-adapted linears of the first numbered block."""
    widths = []
    for name, module in model.named_modules():
        parts = name.split(".")
        first = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        if first is not None and parts[first] == "0" and hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            widths.append(module.base_layer.weight.shape)
    return sum(w for _, w in widths), len(widths), sum(w for w, _ in widths)


def model_shape(config, model_args=None, score_head: str = "classifier") -> ModelShape:
    """The memory-relevant sizes of `config` trained as a reranker with `model_args`' LoRA settings."""
    if score_head not in SCORE_HEADS:
        raise InputError("--score_head", f"must be one of {', '.join(SCORE_HEADS)}, got '{score_head}'")
    model = _build(config, score_head, model_args)
    params = list(model.parameters())
    names = _names(model)
    kinds = {type(m).__name__ for m in model.modules()}
    heads = config.num_attention_heads
    hidden = config.hidden_size
    dtype = getattr(config, "dtype", None)
    dtype = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    attention = getattr(model.config, "_attn_implementation", None) or "eager"
    return ModelShape(
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        largest_module_params=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
        param_sizes=tuple(p.numel() for p in params),
        trainable_sizes=tuple(p.numel() for p in params if p.requires_grad),
        layers=config.num_hidden_layers, hidden=hidden, heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or hidden // heads,
        intermediate=config.intermediate_size, vocab=config.vocab_size,
        rms_norm=any("RMSNorm" in kind for kind in kinds),
        gated_mlp=bool(names & {"gate_proj", "gate_up_proj"}), qk_norm="q_norm" in names,
        attention="eager" if attention == "eager" else "sdpa",
        hidden_dropout=float(getattr(config, "hidden_dropout_prob", 0.0) or 0.0),
        attention_dropout=float(getattr(config, "attention_probs_dropout_prob", None)
                                or getattr(config, "attention_dropout", 0.0) or 0.0),
        checkpoint_bytes=_DTYPE_BYTES.get(dtype, 4), score_head=score_head,
        **_lora_fields(model, model_args))


def _lora_fields(model, model_args) -> dict:
    if model_args is None or model_args.lora_r == 0:
        return {}
    width, count, outputs = _lora_block(model)
    return {"lora_inputs_per_layer": width, "lora_adapters_per_layer": count, "lora_outputs_per_layer": outputs,
            "lora_rank": model_args.lora_r, "lora_dropout": model_args.lora_dropout}
