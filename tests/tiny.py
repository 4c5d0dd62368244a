"""Tiny models and tokenizers built locally from a config: no hub, no network, fast on CPU."""
from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

WORDS = ["the", "what", "is", "of", "in", "new", "york", "weather", "cold", "today", "it", "python", "code"]


def tiny_vocab() -> dict[str, int]:
    """A WordPiece vocab that can spell any lowercase ASCII text (characters and ##characters)."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *chars, *[f"##{c}" for c in chars]]
    return {token: i for i, token in enumerate(vocab)}


def tiny_tokenizer() -> BertTokenizerFast:
    return BertTokenizerFast(vocab=tiny_vocab(), do_lower_case=True)


def tiny_config(vocab_size: int, dropout: float = 0.0) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128, num_labels=1,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def tiny_model_dir(directory, dropout: float = 0.0, seed: int = 0) -> Path:
    """Save a randomly initialised tiny BERT reranker and its tokenizer as a Hugging Face directory."""
    directory = Path(directory)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_config(len(tokenizer), dropout))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
