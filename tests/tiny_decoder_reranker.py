"""Tiny decoder rerankers: a tiny Qwen3 / Llama (tests/tiny_decoder.py) saved with its one-logit `score` head,
so every loader of the directory starts from the same weights (no head drawn at load time)."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.tiny_decoder import tiny_decoder_dir


def tiny_decoder_reranker_dir(directory, arch: str = "qwen3", seed: int = 0, init_range: float = 0.2) -> Path:
    directory = Path(directory)
    causal = tiny_decoder_dir(directory.with_name(directory.name + "-causal"), arch, seed, init_range=init_range)
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_pretrained(causal, num_labels=1).save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(causal)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # decoders take no token types
    tokenizer.save_pretrained(directory)
    return directory
