"""A GGUF file (llama.cpp's single-file format) as a model source: its config, tokenizer and weights.

`transformers` reads the config and the tokenizer from the file's metadata (`gguf_file=`). The weights are
dequantized by transformers' GGUF reader, tensor by tensor into the requested dtype, and loaded into a plain model
of the head's class (`from_pretrained(None, state_dict=…)`): no quantization config stays on the model, so its
checkpoints and exports are ordinary Hugging Face directories, and under ZeRO-3 the weights are partitioned as
they load (the dequantized state dict lives only while `from_pretrained` runs). Reading needs the `gguf` package,
the `gguf` install extra; `check` says so, or what else makes a file unreadable, before any expensive work.
"""
from __future__ import annotations

import copy
import importlib
from functools import lru_cache
from pathlib import Path

import torch
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .errors import InputError

SUFFIX = ".gguf"
INSTALL = 'pip install "bigrerank[gguf]"'


def is_gguf(source) -> bool:
    """Whether `source` names a GGUF file (by its suffix)."""
    return str(source).lower().endswith(SUFFIX)


def check(source) -> None:
    """InputError unless `source` is a GGUF file this installation can read: the `gguf` package is installed, the
    file starts with the GGUF header, and every tensor type in it can be dequantized."""
    path = Path(source)
    try:
        importlib.import_module("gguf")
    except ImportError:
        raise InputError(path, f"reading a GGUF file needs the gguf package: {INSTALL}") from None
    if not path.is_file():
        raise InputError(path, "no such GGUF file")
    stat = path.stat()
    problem = _problem(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if problem:
        raise InputError(path, problem)


@lru_cache(maxsize=8)
def _problem(path: str, size: int, mtime_ns: int) -> str | None:
    """Why the GGUF file at `path` (of this size and time) cannot be read, or None; read once per file version."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError) as e:  # gguf's words for a file that is no GGUF of its versions
        return f"not a readable GGUF file ({e})"
    for qtype, tensor in {t.tensor_type: t for t in reversed(reader.tensors)}.items():
        try:
            gguf.dequantize(tensor.data[:1], qtype)
        except NotImplementedError:
            return f"tensor {tensor.name}: the gguf package cannot dequantize its type {qtype.name}"
    return None


def from_pretrained(auto, source, **kwargs):
    """`auto.from_pretrained(source, **kwargs)` for the GGUF file `source`: a model auto class (`config=` given)
    loads the dequantized weights (`load_weights`); a config or tokenizer class reads the file's metadata.

    A config gets the causal-LM architecture of its model type (a GGUF file holds a language model), so the
    scoring contract picks a decoder's defaults.
    """
    if hasattr(auto, "_model_mapping"):
        return load_weights(auto, source, **kwargs)
    path = Path(source)
    loaded = auto.from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
    config = loaded[0] if isinstance(loaded, tuple) else loaded
    if isinstance(loaded, tuple):  # (config, the kwargs it did not take): the file is read, not passed on
        loaded[1].pop("gguf_file", None)
    if hasattr(config, "model_type") and not getattr(config, "architectures", None):
        causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
        config.architectures = [causal] if causal else None
    return loaded


def load_weights(auto_class, source, config, dtype: torch.dtype | None = None, **options):
    """A model of `auto_class` built from `config`, its weights dequantized from the GGUF file `source` into `dtype`
    (default: torch's default dtype); `options` as `from_pretrained` takes them."""
    if type(config) not in auto_class._model_mapping:
        raise ValueError(f"transformers has no {auto_class.__name__} for '{config.model_type}' models")
    model_class = auto_class._model_mapping[type(config)]
    with torch.device("meta"):  # names the weights for the GGUF reader, holds none
        layout = model_class(copy.deepcopy(config))
    dtype = dtype or torch.get_default_dtype()
    state_dict = load_gguf_checkpoint(str(source), return_tensors=True, model_to_load=layout, torch_dtype=dtype)
    return model_class.from_pretrained(None, config=config, state_dict=state_dict["tensors"], dtype=dtype, **options)
