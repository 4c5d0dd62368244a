"""A tiny Llama and its chat tokenizer written to a GGUF file with the `gguf` package's writer, as llama.cpp's
converter writes one: the config and the byte-level BPE tokenizer (tokens, their types, merges, special token ids,
chat template) as metadata, the weights as F32 tensors under GGUF's names, attention q/k rows in llama.cpp's
rotary order. The same weights and the tokenizer read back from the file also go to a Hugging Face directory.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from tests.tiny_decoder import tiny_decoder_config, tiny_decoder_tokenizer

# SmolLM2's chat template (ChatML, with a default system message when none is given)
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4


def tiny_chat_tokenizer():
    """The tiny decoder tokenizer (tiny_decoder.py) with a ChatML chat template."""
    tokenizer = tiny_decoder_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _rotary_order(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order: each head's two rotary halves interleaved (transformers undoes it on read)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def _tensors(model, config) -> dict[str, np.ndarray]:
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tensors = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        base, suffix = hf_name.rsplit(".", 1)
        weight = tensor.float().numpy()
        if base.endswith("q_proj"):
            weight = _rotary_order(weight, config.num_attention_heads)
        elif base.endswith("k_proj"):
            weight = _rotary_order(weight, config.num_key_value_heads)
        tensors[f"{names.get_name(base)}.{suffix}"] = np.ascontiguousarray(weight)
    return tensors


def _write_tokenizer(writer, tokenizer) -> None:
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    added = tokenizer.added_tokens_decoder
    types = [NORMAL if i not in added else CONTROL if added[i].special else USER_DEFINED for i in range(len(tokens))]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)


def write_gguf(path, model, tokenizer) -> Path:
    """`model` (a Llama causal LM) and `tokenizer` as the GGUF file `path`, all tensors F32."""
    import gguf

    config, path = model.config, Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _write_tokenizer(writer, tokenizer)
    for name, weight in _tensors(model, config).items():
        writer.add_tensor(name, weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_gguf(directory, seed: int = 0, init_range: float = 0.2) -> tuple[Path, Path]:
    """(directory/tiny.gguf, directory/hf): a random tiny Llama chat model as a GGUF file, and the same weights as
    a Hugging Face directory with the tokenizer transformers reads from that file."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_chat_tokenizer()
    torch.manual_seed(seed)
    config = tiny_decoder_config("llama", len(tokenizer), tokenizer.pad_token_id, init_range=init_range)
    config.eos_token_id = tokenizer.eos_token_id
    config.rms_norm_eps = 2.0 ** -20  # GGUF stores it as float32: a value float32 holds exactly
    model = AutoModelForCausalLM.from_config(config)
    path = write_gguf(directory / "tiny.gguf", model, tokenizer)
    model.save_pretrained(directory / "hf")
    AutoTokenizer.from_pretrained(str(directory), gguf_file=path.name).save_pretrained(directory / "hf")
    return path, directory / "hf"
