"""The reranker model: a Hugging Face sequence classifier with one output, scoring (query, passage) pairs.

The engine wraps the Hugging Face model itself, so its state dict is a plain HF state dict (no wrapper
prefixes) and `save_pretrained` output loads in `transformers` unchanged.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          PreTrainedModel)

from .errors import InputError
from .scoring import install_answer_head, scores_from_logits


def _pretrained(load, name_or_path: str, **kwargs):
    """load.from_pretrained(name_or_path), with a missing or unloadable model as an InputError naming it."""
    try:
        return load.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as e:  # transformers' words for a missing, unreachable or unknown model
        where = ("not a loadable model directory" if Path(name_or_path).exists()
                 else "no such directory, and the Hugging Face hub could not provide it")
        raise InputError(name_or_path, f"{where} ({str(e).splitlines()[0]})") from e


def load_config(name_or_path: str, **overrides):
    return _pretrained(AutoConfig, name_or_path, **overrides)


def load_tokenizer(name_or_path: str):
    return _pretrained(AutoTokenizer, name_or_path)


def max_len_problem(max_len: int, max_positions: int | None) -> str | None:
    """Why pairs of `max_len` tokens do not fit a model with `max_positions` positions (None: they do)."""
    if max_positions is not None and max_len > max_positions:
        return f"max_len {max_len} exceeds the model's {max_positions} positions"
    return None


def load_reranker(name_or_path: str, head_init_std: float | None = None, contract=None,
                  **config_overrides) -> PreTrainedModel:
    """The model a scoring contract (scoring.py) asks for: by default, and for the `classifier` head, any backbone
    with a single-logit classification head (a new head when the checkpoint has another); for `yes_no`, the causal
    LM with its LM head cut to the answer rows."""
    if contract is not None and contract.score_head == "yes_no":
        model = AutoModelForCausalLM.from_pretrained(name_or_path, config=load_config(name_or_path, **config_overrides))
        install_answer_head(model, contract)
        return model
    if contract is not None and contract.pad_token_id is not None:
        config_overrides.setdefault("pad_token_id", contract.pad_token_id)  # the decoder reads the last non-pad
    config = load_config(name_or_path, num_labels=1, **config_overrides)
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
    """One relevance score per pair, shape (pairs,), as float32 whatever the compute dtype (either head)."""
    return scores_from_logits(model(**batch).logits, batch.get("attention_mask")).float()
