"""The one model loader: config, tokenizer and weights of a reranker, for training, inference, export and planning.

Each of the three is read by one function (`load_config`, `load_tokenizer`, `load_weights`), and all three by
`_from_pretrained`: the one place that knows where a model comes from (a Hugging Face directory or hub name; a
bare config.json for the config alone). The weights are the class the score head names (heads.py), set up as the
scoring contract says; the engine wraps that Hugging Face model itself, so its state dict is a plain HF state dict
and `save_pretrained` output loads in `transformers` unchanged.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from . import heads
from .errors import InputError
from .heads import scores_from_logits

log = logging.getLogger(__name__)


def _from_pretrained(auto, source, **kwargs):
    """auto.from_pretrained(source), with a missing or unloadable model as an InputError naming it."""
    if Path(source).is_file():
        alone = " or a model's config.json (where the config alone is read)" if auto is AutoConfig else ""
        raise InputError(source, f"a file, not a model directory{alone}")
    try:
        return auto.from_pretrained(str(source), **kwargs)
    except StrictDataclassError as e:  # a config value of the wrong type
        raise InputError(source, f"not a valid model config ({_one_line(e)})") from None
    except (OSError, ValueError) as e:  # transformers' words for a missing, unreachable or unknown model
        where = ("not a loadable model directory" if Path(source).exists()
                 else "no such directory, and the Hugging Face hub could not provide it")
        raise InputError(source, f"{where} ({str(e).splitlines()[0]})") from e


def _one_line(error: Exception) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def load_config(source, **overrides):
    """The model's config with `overrides`: from a model directory or hub name, or a config.json file itself.

    With `return_unused_kwargs=True`: (config, the overrides that are no config values), as transformers splits them.
    """
    path = Path(source)
    if path.suffix == ".json" and path.is_file():
        return _config_file(path, overrides)
    return _from_pretrained(AutoConfig, source, **overrides)


def _config_file(path: Path, overrides: dict):
    split = overrides.pop("return_unused_kwargs", False)
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not a JSON model config ({e})") from None
    if not isinstance(values, dict) or "model_type" not in values:
        raise InputError(path, "a model config needs a JSON object with a 'model_type'", field="model_type")
    try:
        config = AutoConfig.for_model(values.pop("model_type"), **{**values, **overrides})
    except (KeyError, ValueError) as e:
        raise InputError(path, f"unknown model type ({str(e).splitlines()[0]})", field="model_type") from None
    except StrictDataclassError as e:  # a value of the wrong type
        raise InputError(path, f"not a valid model config ({_one_line(e)})") from None
    return (config, {}) if split else config


def load_tokenizer(source, config=None):
    """The tokenizer of `source`; with the model's `config`, a decoder's pads on the right, with its EOS token when
    it has no padding token of its own."""
    tokenizer = _from_pretrained(AutoTokenizer, source)
    if config is not None and heads.is_decoder(config):
        tokenizer.padding_side = "right"
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise InputError(config.name_or_path or source, "the tokenizer has neither a padding nor an EOS token")
            tokenizer.pad_token = tokenizer.eos_token
            log.info("the tokenizer has no padding token: padding with its EOS token %r", tokenizer.eos_token)
    return tokenizer


def load_weights(source, head: heads.ScoreHead, config, **options) -> PreTrainedModel:
    """The weights of `source` in `head`'s model class, built from `config`."""
    return _from_pretrained(head.auto_class, source, config=config, **options)


def load_reranker(source, head_init_std: float | None = None, contract=None, one_logit: bool = True,
                  **kwargs) -> PreTrainedModel:
    """The model a scoring contract (contract.py) scores with; without one, a classifier.

    A classifier has one logit: with `one_logit` (training) a checkpoint with another head gets a new one, drawn
    N(0, `head_init_std`) when given; without (scoring) its head is kept as saved. yes_no: the causal LM with its LM
    head cut to the contract's answer rows. `kwargs` are config values (`attention_dropout=0.1`) and loading options
    (`dtype=…`), told apart as transformers tells them.
    """
    head = contract.head if contract is not None else heads.CLASSIFIER
    config, options = load_config(source, return_unused_kwargs=True, **kwargs)
    pad = contract.pad_token_id if contract is not None and "pad_token_id" not in kwargs else None
    head.configure(config, pad, one_logit)
    model = load_weights(source, head, config, **{**head.load_options(one_logit), **options})
    head.install(model, contract.answer_rows() if contract is not None else None)
    if head_init_std is not None:
        head.reset(model, head_init_std)
    return model


def max_len_problem(max_len: int, max_positions: int | None) -> str | None:
    """Why pairs of `max_len` tokens do not fit a model with `max_positions` positions (None: they do)."""
    if max_positions is not None and max_len > max_positions:
        return f"max_len {max_len} exceeds the model's {max_positions} positions"
    return None


def pair_scores(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One relevance score per pair, shape (pairs,), as float32 whatever the compute dtype (either head)."""
    return scores_from_logits(model(**batch).logits, batch.get("attention_mask")).float()
