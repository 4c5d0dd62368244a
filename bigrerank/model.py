"""The reranker model: a Hugging Face sequence classifier with one output, scoring (query, passage) pairs.

The engine wraps the Hugging Face model itself, so its state dict is a plain HF state dict (no wrapper
prefixes) and `save_pretrained` output loads in `transformers` unchanged.
"""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel


def load_tokenizer(name_or_path: str):
    return AutoTokenizer.from_pretrained(name_or_path)


def load_reranker(name_or_path: str, head_init_std: float | None = None, **config_overrides) -> PreTrainedModel:
    """Any backbone with a single-logit classification head (a new head when the checkpoint has another)."""
    config = AutoConfig.from_pretrained(name_or_path, num_labels=1, **config_overrides)
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path, config=config,
                                                               ignore_mismatched_sizes=True)
    if head_init_std is not None:
        reset_head(model, head_init_std)
    return model


def reset_head(model: PreTrainedModel, std: float) -> None:
    """Re-draw the final classification layer: weights N(0, std), bias 0."""
    head = _last_linear(getattr(model, "classifier", None) or getattr(model, "score", None) or model)
    with torch.no_grad():
        head.weight.normal_(0.0, std)
        if head.bias is not None:
            head.bias.zero_()


def _last_linear(module: torch.nn.Module) -> torch.nn.Linear:
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError("model has no linear classification head to re-initialise")
    return linears[-1]


def pair_scores(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One relevance score per pair, shape (pairs,), as float32 whatever the compute dtype."""
    return model(**batch).logits.squeeze(-1).float()
