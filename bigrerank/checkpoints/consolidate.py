"""DeepSpeed checkpoint (ZeRO 0-3, offloaded, fp32 or bf16) -> a plain Hugging Face reranker directory.

Weights come from DeepSpeed's own consolidation (`deepspeed.utils.zero_to_fp32`: the fp32 master
weights gathered from every rank's partition); ZeRO-0 checkpoints hold whole weights and are read
directly: in bf16/fp16 the optimizer's fp32 master copies, named by the checkpoint's manifest. The
directory (config.json, model.safetensors — sharded when large —, tokenizer files, README.md model card, the
scoring contract and the training record, TRAINING_INFO) is built in a temporary folder and moved into place
complete.
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

from .. import heads, lora
from ..atomic import apply_umask, temp_dir_beside
from ..contract import ScoringContract
from ..errors import InputError
from ..model import load_config, load_tokenizer
from .store import MANIFEST, damaged, incomplete_reason, is_save_dir, latest, read_manifest

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


def fp32_state_dict(root: Path, tag: str) -> dict[str, torch.Tensor]:
    """The full model weights in fp32, gathered from the checkpoint's partitions."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag_dir = root / tag
    module_file = tag_dir / "mp_rank_00_model_states.pt"  # ZeRO 0-2 (ZeRO-3 names its files per rank)
    states = (torch.load(module_file, map_location="cpu", weights_only=False, mmap=True)
              if module_file.is_file() else {})
    full, partitioned = {}, any(tag_dir.glob("*zero_pp_rank_*_optim_states.pt"))
    if partitioned:
        try:
            full = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
        except ValueError as e:
            if "is not a zero checkpoint" not in str(e):
                raise
            partitioned = False
    # ZeRO-0 holds every weight in the module file; ZeRO-1 leaves frozen weights (LoRA's base) out of its
    # partitions, whole in the module file too
    for name, tensor in states.get("module", {}).items():
        full.setdefault(name, tensor)
    # frozen weights come in their training dtype: fp32 too, so LoRA merges into them without bf16 rounding
    weights = {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in full.items()}
    if not partitioned:  # ZeRO-0 in bf16/fp16: the optimizer's fp32 masters, not the module's 16-bit copies
        group_names = read_manifest(tag_dir).get("master_weight_groups")
        weights.update(_master_weights(states.get("optimizer"), group_names, weights))
    return weights


def _master_weights(optimizer_state, group_names: list[list[str]] | None, module: dict) -> dict[str, torch.Tensor]:
    """ZeRO-0 in bf16/fp16: {name: fp32 master weight} from DeepSpeed's mixed-precision optimizer state
    (a tensor per parameter, or one flat tensor per group, in the group's parameter order)."""
    if not group_names or not isinstance(optimizer_state, dict):
        return {}
    groups = optimizer_state.get("fp32_groups")
    if groups is None and optimizer_state.get("fp32_groups_flat") is not None:
        groups = [flat.split([module[name].numel() for name in names])
                  for names, flat in zip(group_names, optimizer_state["fp32_groups_flat"], strict=True)]
    masters = {}
    for names, tensors in zip(group_names, groups or [], strict=True):
        masters.update((name, t.float().view(module[name].shape)) for name, t in zip(names, tensors, strict=True))
    return masters


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


def write_model_dir(state_dict: dict, config, tokenizer, out_dir, info: dict, max_shard_size: str = "5GB",
                    contract: ScoringContract | None = None) -> Path:
    """Write an HF reranker directory from a full state dict; it appears complete or not at all.

    The model class of the contract's head (a classifier without one); the contract goes beside it."""
    out_dir = Path(out_dir)
    head = contract.head if contract is not None else heads.CLASSIFIER
    model = head.on_meta(config)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state_dict) - set(getattr(model, "_tied_weights_keys", None) or []))
    if missing:
        raise ValueError(f"checkpoint weights lack {len(missing)} tensors of the model, e.g. {missing[:3]}")
    return _build_dir(out_dir, tokenizer, info, model_card(config, head, info), lambda tmp: model.save_pretrained(
        tmp, state_dict={k: v for k, v in state_dict.items() if k in expected}, max_shard_size=max_shard_size),
        contract)


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
                adapter_only: bool = False, verify: bool = True) -> Path:
    """A checkpoint as a Hugging Face directory: LoRA merged into its base (or, with `adapter_only`, the peft
    adapter); a `yes_no` model becomes a sequence classifier of its architecture unless `keep_causal_lm`.
    `verify`: compare every file's checksum first (the end of training skips it for the checkpoint it has just
    written)."""
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
    weights = fp32_state_dict(root, tag)
    if adapter_only:
        return write_adapter_dir(lora.trained_peft_model(config, hf_dir, weights), tokenizer, out_dir, info, contract)
    state_dict = lora.export_state(config, hf_dir, weights)
    if contract is not None and not keep_causal_lm:
        state_dict, config = contract.head.exported(state_dict, config, contract.answer_rows(), contract.pad_token_id)
        contract = contract.as_classifier()
    return write_model_dir(state_dict, config, tokenizer, out_dir, info, contract=contract)


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
