"""DeepSpeed checkpoint (ZeRO 0-3, offloaded, fp32 or bf16) -> a plain Hugging Face reranker directory.

Weights come from DeepSpeed's own consolidation (`deepspeed.utils.zero_to_fp32`: the fp32 master
weights gathered from every rank's partition); ZeRO-0 checkpoints hold whole weights and are read
directly. The directory (config.json with num_labels=1, model.safetensors — sharded when large —,
tokenizer files, README.md model card) is built in a temporary folder and moved into place complete.
A LoRA checkpoint is exported merged into its base, or with `adapter_only` as the peft adapter (adapter_config.json
naming the base, adapter_model.safetensors with the adapters and the trained head).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, HfArgumentParser

from .. import lora
from ..atomic import temp_dir_beside
from ..errors import InputError
from .store import MANIFEST, incomplete_reason

TRAINING_INFO = "bigrerank_training.json"


def locate(checkpoint, tag: str | None = None) -> tuple[Path, str]:
    """(DeepSpeed save dir, tag) from a save dir (+ optional tag, else its `latest`) or a tag dir itself."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise InputError(path, "no such checkpoint directory")
    if tag is None and (path / MANIFEST).is_file():
        return path.parent, path.name
    if tag is None:
        latest = path / "latest"
        if not latest.is_file():
            raise InputError(path, "no 'latest' file and no --tag: which checkpoint?")
        tag = latest.read_text().strip()
    reason = incomplete_reason(path / tag)
    if reason:
        raise InputError(path / tag, f"checkpoint is not complete: {reason}")
    return path, tag


def fp32_state_dict(root: Path, tag: str) -> dict[str, torch.Tensor]:
    """The full model weights in fp32, gathered from the checkpoint's partitions."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag_dir = root / tag
    module_file = tag_dir / "mp_rank_00_model_states.pt"  # ZeRO 0-2 (ZeRO-3 names its files per rank)
    module = (torch.load(module_file, map_location="cpu", weights_only=False, mmap=True)["module"]
              if module_file.is_file() else {})
    full = {}
    if any(tag_dir.glob("*zero_pp_rank_*_optim_states.pt")):
        try:
            full = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
        except ValueError as e:
            if "is not a zero checkpoint" not in str(e):
                raise
    # ZeRO-0 holds every weight in the module file; ZeRO-1 leaves frozen weights (LoRA's base) out of its
    # partitions, whole in the module file too
    for name, tensor in module.items():
        if name not in full:
            full[name] = tensor
    # frozen weights come in their training dtype: fp32 too, so LoRA merges into them without bf16 rounding
    return {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in full.items()}


def model_card(config, info: dict) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in info.items())
    return (f"# Cross-encoder reranker\n\nA `{config.model_type}` sequence classifier with one relevance logit, "
            "trained with [bigrerank](https://pypi.org/project/bigrerank/) on DeepSpeed.\n\n"
            "```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
            "model = AutoModelForSequenceClassification.from_pretrained(path)\n"
            "tokenizer = AutoTokenizer.from_pretrained(path)\n"
            "score = model(**tokenizer(query, passage, return_tensors='pt')).logits[0, 0]\n```\n\n"
            f"## Training\n\n| setting | value |\n|---|---|\n{rows}\n")


def write_model_dir(state_dict: dict, config, tokenizer, out_dir, info: dict, max_shard_size: str = "5GB") -> Path:
    """Write an HF reranker directory from a full state dict; it appears complete or not at all."""
    out_dir = Path(out_dir)
    config.num_labels = 1
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state_dict) - set(getattr(model, "_tied_weights_keys", None) or []))
    if missing:
        raise ValueError(f"checkpoint weights lack {len(missing)} tensors of the model, e.g. {missing[:3]}")
    return _build_dir(out_dir, tokenizer, info, model_card(config, info), lambda tmp: model.save_pretrained(
        tmp, state_dict={k: v for k, v in state_dict.items() if k in expected}, max_shard_size=max_shard_size))


def write_adapter_dir(peft_model, tokenizer, out_dir, info: dict) -> Path:
    """Write the peft adapter (its config naming the base model) with the trained head, and the tokenizer."""
    peft_model.peft_config["default"].base_model_name_or_path = info.get("base_model")
    return _build_dir(Path(out_dir), tokenizer, info, None, peft_model.save_pretrained)


def _build_dir(out_dir: Path, tokenizer, info: dict, card: str | None, save_weights) -> Path:
    """Fill a temporary folder (`save_weights(folder)`, tokenizer, model card, training info), then put it in place."""
    tmp = temp_dir_beside(out_dir)
    try:
        save_weights(tmp)
        tokenizer.save_pretrained(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card)
        (tmp / TRAINING_INFO).write_text(json.dumps(info, indent=1, default=str))
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


def consolidate(checkpoint, out_dir, tag: str | None = None, adapter_only: bool = False) -> Path:
    root, tag = locate(checkpoint, tag)
    hf_dir = root / tag / "hf"
    if adapter_only and not lora.is_lora(hf_dir):
        raise InputError(root / tag, "--adapter_only: this checkpoint was not trained with LoRA (--lora_r)")
    config = AutoConfig.from_pretrained(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    info_file = hf_dir / TRAINING_INFO
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    info["checkpoint"] = f"{root.name}/{tag}"
    weights = fp32_state_dict(root, tag)
    if adapter_only:
        return write_adapter_dir(lora.trained_peft_model(config, hf_dir, weights), tokenizer, out_dir, info)
    return write_model_dir(lora.export_state(config, hf_dir, weights), config, tokenizer, out_dir, info)


@dataclass
class ConsolidateArguments:
    checkpoint: str
    out_dir: str
    tag: str | None = None
    adapter_only: bool = False  # LoRA: the peft adapter and head instead of the merged model


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(ConsolidateArguments)
    parser.description = "Turn a DeepSpeed checkpoint into a Hugging Face reranker directory."
    args, = parser.parse_args_into_dataclasses(args=_positional(argv))
    out = consolidate(args.checkpoint, args.out_dir, args.tag, args.adapter_only)
    print(f"wrote {out}")
    return 0


def _positional(argv: list[str] | None) -> list[str] | None:
    """Accept `consolidate CKPT_DIR OUT_DIR [--tag TAG]` (positional) as well as --checkpoint/--out_dir."""
    if argv is None or len(argv) < 2 or argv[0].startswith("-") or argv[1].startswith("-"):
        return argv
    return ["--checkpoint", argv[0], "--out_dir", argv[1], *argv[2:]]
