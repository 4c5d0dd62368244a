"""The sizes of a model that memory depends on, read off its config with the model built on `meta` (no weights).

Parameter counts (total, trainable under LoRA, the largest module, every tensor's size) come from the very
module training builds: the model class of the score head (heads.py), wrapped by peft when LoRA is on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import heads, lora

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
    score_head: str = "classifier"  # heads.py: what the score reads
    lora_inputs_per_layer: int = 0   # LoRA: summed input width of one block's adapted projections
    lora_adapters_per_layer: int = 0
    lora_outputs_per_layer: int = 0  # LoRA: summed output width of the same projections
    lora_rank: int = 0
    lora_dropout: float = 0.0
    matmul_params: int = 0           # the weights that multiply each token: every linear's but the LM head's


def _build(config, head: heads.ScoreHead, model_args):
    model = head.on_meta(config)
    if model_args is not None and model_args.lora_r > 0:
        from peft import get_peft_model

        with torch.device("meta"):
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
    model = _build(config, heads.get(score_head), model_args)
    params = list(model.parameters())
    names = _names(model)
    kinds = {type(m).__name__ for m in model.modules()}
    attention_heads = config.num_attention_heads
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
        layers=config.num_hidden_layers, hidden=hidden, heads=attention_heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or attention_heads,
        head_dim=getattr(config, "head_dim", None) or hidden // attention_heads,
        intermediate=config.intermediate_size, vocab=config.vocab_size,
        rms_norm=any("RMSNorm" in kind for kind in kinds),
        gated_mlp=bool(names & {"gate_proj", "gate_up_proj"}), qk_norm="q_norm" in names,
        attention="eager" if attention == "eager" else "sdpa",
        hidden_dropout=float(getattr(config, "hidden_dropout_prob", 0.0) or 0.0),
        attention_dropout=float(getattr(config, "attention_probs_dropout_prob", None)
                                or getattr(config, "attention_dropout", 0.0) or 0.0),
        checkpoint_bytes=_DTYPE_BYTES.get(dtype, 4), score_head=score_head, matmul_params=_matmul_params(model),
        **_lora_fields(model, model_args))


def _matmul_params(model) -> int:
    """Weights of the linear layers a token goes through; the LM head is left out (the yes_no head multiplies two of
    its rows), embeddings are looked up, not multiplied."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sum(m.weight.numel() for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m is not output and getattr(m, "weight", None) is not None)


def _lora_fields(model, model_args) -> dict:
    if model_args is None or model_args.lora_r == 0:
        return {}
    width, count, outputs = _lora_block(model)
    return {"lora_inputs_per_layer": width, "lora_adapters_per_layer": count, "lora_outputs_per_layer": outputs,
            "lora_rank": model_args.lora_r, "lora_dropout": model_args.lora_dropout}
