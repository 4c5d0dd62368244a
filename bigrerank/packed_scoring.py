"""Scores of packed rows (data/packing.py): one score per pair, read where the padded batch reads it.

The model runs its own forward on the rows, with position ids that restart at each pair, no attention mask and no
cache: transformers then keeps each pair's attention inside the pair (sdpa and eager build the block-diagonal
mask, flash-attention runs its varlen kernels). The score is read per pair:

- an encoder's classifier reads each pair's first token: the output of the encoder stack is cut to those tokens,
  one per pair, before the model's own pooler and classification head see it;
- a decoder reads each pair's last token: the yes_no head's answer logits there, or the classifier's `score` at
  the pair's last token that is not the padding token (the token a right-padded row's classifier reads).

`check` runs two pairs packed and alone at start-up, and refuses an architecture whose attention does not keep
packed pairs apart.
"""
from __future__ import annotations

import contextlib

import torch
from transformers.utils import ModelOutput

from . import heads
from .data.packing import LAYOUT_KEYS

_ENCODER_STACKS = ("encoder", "transformer")  # BERT, RoBERTa, ELECTRA, DeBERTa …; DistilBERT


def hf_model(model):
    """The Hugging Face model inside a DeepSpeed engine and a peft wrapper."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported(model) -> str | None:
    """Why packed rows cannot be scored with `model` (None: they can)."""
    hf = hf_model(model)
    if heads.is_decoder(hf.config):
        if heads.carried_by(hf) is heads.CLASSIFIER and getattr(hf, "score", None) is None:
            return f"'{hf.config.model_type}' has no `score` head to read at each pair's last token"
        return None
    if _encoder_stack(hf) is None:
        return (f"'{hf.config.model_type}' has no encoder stack ({' or '.join(_ENCODER_STACKS)}) whose output can "
                "be cut to each pair's first token")
    return None


def _encoder_stack(hf):
    base = hf.base_model
    return next((getattr(base, name) for name in _ENCODER_STACKS if isinstance(getattr(base, name, None),
                                                                            torch.nn.Module)), None)


def packed_scores(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(pairs,) float32 scores of a packed batch, in the order its pairs were given."""
    inputs = {name: value for name, value in batch.items() if name not in LAYOUT_KEYS}
    starts, lengths = batch["pair_starts"], batch["pair_lengths"]
    hf = hf_model(model)
    if not heads.is_decoder(hf.config):
        with _output_cut(_encoder_stack(hf), starts):
            return heads.CLASSIFIER.scores(model(**inputs).logits, None).float()
    if heads.carried_by(hf) is heads.YES_NO:
        logits = model(**inputs, use_cache=False).logits  # (rows, positions, answer rows)
        return heads.YES_NO.scores(logits.flatten(0, 1)[starts + lengths - 1].unsqueeze(1), None).float()
    with _captured(hf.score) as outputs:
        model(**inputs, use_cache=False)
    per_position = outputs[-1].flatten(0, 1)[:, 0]  # the score head at every position of the rows
    pad = hf.config.get_text_config().pad_token_id
    return per_position[_last_non_padding(inputs["input_ids"].flatten(), starts, lengths, pad)].float()


def _last_non_padding(ids: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, pad: int | None):
    """Flat position of each pair's last token that is not `pad` (its first token when all are)."""
    last = starts + lengths - 1
    if pad is None:
        return last
    pair = torch.repeat_interleave(torch.arange(len(starts), device=ids.device), lengths)
    within = torch.arange(len(pair), device=ids.device) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    position = torch.repeat_interleave(starts, lengths) + within
    key = torch.where(ids[position] != pad, position, -1)
    found = torch.full_like(starts, -1).scatter_reduce(0, pair, key, "amax")
    return torch.where(found >= 0, found, starts)


@contextlib.contextmanager
def _output_cut(stack: torch.nn.Module, positions: torch.Tensor):
    """While open, `stack`'s (rows, positions, hidden) output is cut to (pairs, 1, hidden) at flat `positions`."""
    def cut(module, args, output):
        hidden = output[0].flatten(0, 1).index_select(0, positions).unsqueeze(1)
        if isinstance(output, ModelOutput):
            output["last_hidden_state"] = hidden
            return output
        return (hidden, *output[1:])

    handle = stack.register_forward_hook(cut)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _captured(module: torch.nn.Module):
    """While open, each output of `module` is appended to the yielded list."""
    outputs = []
    handle = module.register_forward_hook(lambda mod, args, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()
