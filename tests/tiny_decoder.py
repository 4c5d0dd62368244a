"""Tiny decoder LLMs (Qwen3 / Llama architecture) and a byte-level BPE tokenizer, built locally from a config.

The tokenizer carries the chat special tokens the reranker templates use (`<|im_start|>`, `<|im_end|>`,
`<think>`, `</think>`), pads with `<|endoftext|>`, ends with `<|im_end|>`, and spells "yes", "no" and "Yes" as
single tokens, like the released Qwen3 and Gemma tokenizers.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen3Config

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED_TOKENS = ["<think>", "</think>", "yes", "no", "Yes"]
_CORPUS = [
    "the weather in new york is cold today", "what is python code", "Judge whether the Document meets the",
    "requirements based on the Query and the Instruct provided. Note that the answer can only be",
    "system user assistant Instruct Query Document Given a web search query, retrieve relevant passages",
    "A: B: Given a query A and a passage B, determine whether the passage contains an answer to the query",
    "by providing a prediction of either 'Yes' or 'No'.", "0123456789 abcdefghijklmnopqrstuvwxyz",
]

# sample pairs to score, of mixed lengths
QUERIES = ["what is python", "weather in new york", "cold", "0123 what code"]
PASSAGES = ["python code is what it is", "it is cold today in new york, the weather says",
            "abcdefghijklmnopqrstuvwxyz", "today"]


def tiny_decoder_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.add_tokens(ADDED_TOKENS)
    return fast


def tiny_decoder_config(arch: str, vocab_size: int, pad_token_id: int, tie: bool = True,
                        init_range: float = 0.02, dropout: float = 0.0):
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=tie, pad_token_id=pad_token_id, initializer_range=init_range,
                  attention_dropout=dropout)
    if arch == "qwen3":
        return Qwen3Config(head_dim=8, **common)
    if arch == "llama":
        return LlamaConfig(head_dim=8, **common)
    raise ValueError(f"unknown tiny decoder architecture {arch!r}")


def tiny_decoder_dir(directory, arch: str = "qwen3", seed: int = 0, tie: bool = True, init_range: float = 0.02,
                     dropout: float = 0.0) -> Path:
    """Save a randomly initialised tiny causal LM and its tokenizer as a Hugging Face directory."""
    directory = Path(directory)
    tokenizer = tiny_decoder_tokenizer()
    torch.manual_seed(seed)
    config = tiny_decoder_config(arch, len(tokenizer), tokenizer.pad_token_id, tie, init_range, dropout)
    config.eos_token_id = tokenizer.eos_token_id
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
