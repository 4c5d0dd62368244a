"""DeepSpeed checkpoint (ZeRO 0-3, offloaded, fp32 or bf16) -> a plain Hugging Face reranker directory.

Weights are the fp32 master weights, read from the memory-mapped checkpoint files and written one tensor and one
safetensors shard at a time (`streaming`): the export's memory is bounded by its largest tensor and one shard, not
the model. The directory (config.json, model.safetensors — sharded with its index when larger than the shard
size —, tokenizer files, README.md model card, the scoring contract and the training record, TRAINING_INFO) is
built in a temporary folder and moved into place complete.
A LoRA checkpoint is exported merged into its base (a yes_no model then converted to a classifier, unless
`keep_causal_lm`), or with `adapter_only` as the peft adapter (adapter_config.json naming the base and its task,
SEQ_CLS or CAUSAL_LM for yes_no; adapter_model.safetensors with the adapters and a classifier's trained head).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from transformers.utils.hub import convert_file_size_to_int

from .. import ds_config, heads, lora
from ..atomic import apply_umask, temp_dir_beside
from ..host_memory import return_freed_memory
from ..contract import ScoringContract
from ..errors import InputError
from ..model import load_config, load_tokenizer
from .store import MANIFEST, damaged, incomplete_reason, is_save_dir, latest
from .streaming import Lazy, checkpoint_weights, export_names, merged_lora, write_safetensors

TRAINING_INFO = "bigrerank_training.json"
EXPORTED_FILES = "exported_files"  # the key of TRAINING_INFO listing the export's files


def exported_files(directory) -> list[Path]:
    """The files of a previous export in `directory` (the ones its TRAINING_INFO lists), else []."""
    info_file = Path(directory) / TRAINING_INFO
    if not info_file.is_file():
        return []
    try:
        names = json.loads(info_file.read_text()).get(EXPORTED_FILES) or []
    except (ValueError, AttributeError):
        names = []
    plain = {name for name in (*names, TRAINING_INFO) if isinstance(name, str) and Path(name).name == name != ".."}
    return sorted(Path(directory) / name for name in plain if (Path(directory) / name).exists())


def locate(checkpoint, tag: str | None = None, verify: bool = True) -> tuple[Path, str]:
    """(DeepSpeed save dir, tag) from a save dir (+ optional tag, else its `latest`) or a tag dir itself; with
    `verify`, every file's checksum is compared with the saved one."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise InputError(path, "no such checkpoint directory")
    if tag is None and (path / MANIFEST).is_file():
        return path.parent, path.name
    if tag is None:
        found = latest(path) if is_save_dir(path) else None
        if found is None:
            pointer = path / "latest"
            if not pointer.is_file():
                raise InputError(path, "no 'latest' file and no --tag, and no complete step-N checkpoint: "
                                       "which checkpoint?")
            tag = pointer.read_text().strip()
        else:
            tag = found.name
    reason = incomplete_reason(path / tag)
    if reason:
        raise InputError(path / tag, f"checkpoint is not complete: {reason}")
    reason = damaged(path / tag) if verify else None
    if reason:
        raise InputError(path / tag, f"checkpoint cannot be read: {reason}")
    return path, tag


def model_card(config, head: heads.ScoreHead, info: dict) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in info.items())
    if head is heads.YES_NO:
        intro = (f"# LLM reranker\n\nA `{config.model_type}` causal LM scoring a pair as logit(yes) - logit(no) at "
                 "the end of its prompt (see bigrerank_scoring.json)")
        usage = ("from bigrerank import RerankerForInference\n"
                 "scores = RerankerForInference.from_pretrained(path).score(queries, passages)")
    else:
        intro = f"# Cross-encoder reranker\n\nA `{config.model_type}` sequence classifier with one relevance logit"
        usage = ("from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
                 "model = AutoModelForSequenceClassification.from_pretrained(path)\n"
                 "tokenizer = AutoTokenizer.from_pretrained(path)\n"
                 "score = model(**tokenizer(query, passage, return_tensors='pt')).logits[0, 0]")
    return (f"{intro}, trained with [bigrerank](https://pypi.org/project/bigrerank/) on DeepSpeed.\n\n"
            f"```python\n{usage}\n```\n\n## Training\n\n| setting | value |\n|---|---|\n{rows}\n")


def write_model_dir(weights: dict[str, Lazy], config, tokenizer, out_dir, info: dict, max_shard_size="5GB",
                    contract: ScoringContract | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write an HF reranker directory from lazy weights, streamed shard by shard (as `dtype`); it appears complete
    or not at all. The model class of the contract's head (a classifier without one); the contract goes beside it."""
    head = contract.head if contract is not None else heads.CLASSIFIER
    model = head.on_meta(config)
    model.config.architectures = [type(model).__name__]
    model.config.dtype = dtype
    limit = convert_file_size_to_int(max_shard_size)

    def save_weights(folder: Path) -> None:
        write_safetensors(weights, export_names(model), folder, dtype, limit, on_shard=return_freed_memory)
        model.config.save_pretrained(folder)
        if model.can_generate() and model.generation_config is not None:
            model.generation_config.save_pretrained(folder)

    return _build_dir(Path(out_dir), tokenizer, info, model_card(config, head, info), save_weights, contract)


def write_adapter_dir(peft_model, tokenizer, out_dir, info: dict, contract: ScoringContract | None = None) -> Path:
    """Write the peft adapter (its config naming the base model) with a classifier's trained head, the tokenizer and
    the scoring contract."""
    peft_model.peft_config["default"].base_model_name_or_path = info.get("base_model")
    return _build_dir(Path(out_dir), tokenizer, info, None, peft_model.save_pretrained, contract)


def _build_dir(out_dir: Path, tokenizer, info: dict, card: str | None, save_weights,
               contract: ScoringContract | None = None) -> Path:
    """Fill a temporary folder (`save_weights(folder)`, tokenizer, model card, scoring contract, training info with
    the list of exported files), then put it in place."""
    tmp = temp_dir_beside(out_dir)
    try:
        save_weights(tmp)
        tokenizer.save_pretrained(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card)
        if contract is not None:
            contract.save(tmp)
        files = sorted([*(p.name for p in tmp.iterdir()), TRAINING_INFO])
        (tmp / TRAINING_INFO).write_text(json.dumps({**info, EXPORTED_FILES: files}, indent=1, default=str))
        apply_umask(tmp)
        _place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _place(tmp: Path, out_dir: Path) -> None:
    """Move a finished export into `out_dir`: a rename when new, else file by file with config.json last."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    for stale in [*out_dir.glob("model*.safetensors*"), *out_dir.glob("adapter_model*.safetensors")]:
        stale.unlink()
    files = sorted(tmp.iterdir(), key=lambda p: p.name == "config.json")
    for item in files:
        target = out_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)


def consolidate(checkpoint, out_dir, tag: str | None = None, keep_causal_lm: bool = False,
                adapter_only: bool = False, verify: bool = True, max_shard_size: str | int = "5GB",
                export_dtype: str | None = None) -> Path:
    """A checkpoint as a Hugging Face directory: LoRA merged into its base (or, with `adapter_only`, the peft
    adapter); a `yes_no` model becomes a sequence classifier of its architecture unless `keep_causal_lm`.
    Weights are read and written a tensor at a time: safetensors shards of at most `max_shard_size` (transformers'
    notation, e.g. "5GB"), in `export_dtype` (fp32, bf16, fp16; None: the dtype the run trained in) made from the
    fp32 master weights. `verify`: compare every file's checksum first (the end of training skips it for the
    checkpoint it has just written)."""
    root, tag = locate(checkpoint, tag, verify)
    hf_dir = root / tag / "hf"
    if adapter_only and not lora.is_lora(hf_dir):
        raise InputError(root / tag, "--adapter_only: this checkpoint was not trained with LoRA (--lora_r)")
    config = load_config(hf_dir)
    tokenizer = load_tokenizer(hf_dir, config)
    info_file = hf_dir / TRAINING_INFO
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    info["checkpoint"] = f"{root.name}/{tag}"
    contract = ScoringContract.read(hf_dir)
    if keep_causal_lm:
        (contract or ScoringContract(heads.CLASSIFIER.name, None)).check_keep_causal_lm(root / tag)
    weights = checkpoint_weights(root, tag)
    dtype = ds_config.DTYPES[export_dtype] if export_dtype else trained_dtype(info)
    if adapter_only:
        adapter = {name: lazy() for name, lazy in weights.items() if lora.is_adapter_weight(name)}
        return write_adapter_dir(lora.trained_peft_model(config, hf_dir, adapter, base=False), tokenizer, out_dir,
                                 info, contract)
    if lora.is_lora(hf_dir):
        weights = merged_lora(weights, lora.adapter_config(hf_dir))
    if contract is not None and not keep_causal_lm:
        weights, config = contract.head.exported(weights, config, contract.answer_rows(), contract.pad_token_id)
        contract = contract.as_classifier()
    try:
        return write_model_dir(weights, config, tokenizer, out_dir, info, max_shard_size, contract, dtype)
    finally:
        return_freed_memory()


def trained_dtype(info: dict) -> torch.dtype:
    """The dtype the run trained its weights in (its TRAINING_INFO's bf16/fp16 flags), as `save_pretrained` keeps
    a model's dtype."""
    return ds_config.training_dtype(info.get("bf16"), info.get("fp16"))


def is_export(directory: Path) -> bool:
    """Whether `directory` holds a model this project exported (its training record beside config.json)."""
    return (directory / TRAINING_INFO).is_file() and (directory / "config.json").is_file()


def check_export_dir(out_dir) -> None:
    """InputError unless `out_dir` may receive an export: absent, empty, or a previous export of ours."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a directory")
    if any(out_dir.iterdir()) and not is_export(out_dir):
        raise InputError(out_dir, f"is not empty and holds no previous export (no {TRAINING_INFO} and config.json): "
                                  "refusing to replace its files; give a new or empty directory")
