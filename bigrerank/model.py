"""The one model loader: config, tokenizer and weights of a reranker, for training, inference, export and planning.

Each of the three is read by one function (`load_config`, `load_tokenizer`, `load_weights`), and all three by
`_from_pretrained`: the one place that knows where a model comes from (a Hugging Face directory or hub name; a
GGUF file, read by gguf_file.py; a bare config.json for the config alone). The weights are the class the score head
names (heads.py), set up as the scoring contract says; the engine wraps that Hugging Face model itself, so its state
dict is a plain HF state dict and `save_pretrained` output loads in `transformers` unchanged.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from . import gguf_file, heads, packed_scoring
from .data import packing
from .errors import InputError
from .heads import scores_from_logits

log = logging.getLogger(__name__)


def _from_pretrained(auto, source, **kwargs):
    """auto.from_pretrained(source), with a missing or unloadable model as an InputError naming it.

    A GGUF file is checked first (gguf_file.check), then read by gguf_file.py; another file is refused."""
    if gguf_file.is_gguf(source):
        gguf_file.check(source)
    elif Path(source).is_file():
        alone = " or a model's config.json (where the config alone is read)" if auto is AutoConfig else ""
        raise InputError(source, f"a file, not a model directory{alone}")
    try:
        if gguf_file.is_gguf(source):
            return gguf_file.from_pretrained(auto, source, **kwargs)
        return auto.from_pretrained(str(source), **kwargs)
    except StrictDataclassError as e:  # a config value of the wrong type
        raise InputError(source, f"not a valid model config ({_one_line(e)})") from None
    except (OSError, ValueError) as e:  # transformers' words for a missing, unreachable or unknown model
        raise InputError(source, f"{_unloadable(source)} ({str(e).splitlines()[0]})") from e


def _unloadable(source) -> str:
    if gguf_file.is_gguf(source):
        return "a GGUF file transformers cannot read"
    if Path(source).exists():
        return "not a loadable model directory"
    return "no such directory, and the Hugging Face hub could not provide it"


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
    """One relevance score per pair, shape (pairs,), as float32 whatever the compute dtype (either head), of a
    padded or a packed batch (PairEncoder.collate)."""
    if packing.LAYOUT_KEYS[0] in batch:
        return packed_scoring.packed_scores(model, batch)
    return scores_from_logits(model(**batch).logits, batch.get("attention_mask")).float()


_PROBE_QUERIES = ["what is the weather in new york today", "python code", "is it cold"]
_PROBE_PASSAGES = ["it is cold in new york", "what is python code: the code of python is new", "cold today"]


def check_packing(model, encoder, device, where) -> None:
    """InputError unless `model` scores pairs packed in one row as it scores each alone (its attention keeps packed
    pairs apart); within 1e-4 of the scores' scale in fp32, 2e-2 in half precision. Every rank calls it."""
    problem = packed_scoring.unsupported(model)
    if problem is not None:
        raise InputError(where, f"--padding_free: {problem}")
    pairs = encoder.encode_texts(_PROBE_QUERIES, _PROBE_PASSAGES)
    rows = packing.pack(pairs, sum(len(ids) for ids, _ in pairs), encoder.pad_id, encoder.use_token_types)
    net = getattr(model, "module", model)
    tolerance = 1e-4 if next(net.parameters()).dtype == torch.float32 else 2e-2
    training = net.training
    net.eval()
    try:
        with torch.no_grad():
            alone = torch.cat([pair_scores(model, _to(encoder.pad([pair]), device)) for pair in pairs])
            packed = pair_scores(model, _to(rows, device))
    finally:
        net.train(training)
    error = (packed - alone).abs().max().item()
    if not error <= tolerance * (1.0 + alone.abs().max().item()):
        raise InputError(where, f"--padding_free: '{packed_scoring.hf_model(model).config.model_type}' scores "
                                f"pairs packed in one row differently from each alone (by {error:.3g}): its "
                                "attention does not keep packed pairs apart; train or score without --padding_free")


def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {name: value.to(device) for name, value in batch.items()}
