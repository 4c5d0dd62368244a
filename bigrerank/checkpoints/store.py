"""DeepSpeed checkpoints that are complete or ignored: per-rank RNG, a completion manifest, an atomic
`latest` pointer and rotation.

Layout under `<output_dir>/checkpoints/`: one DeepSpeed tag directory per saved step (`step-<N>/`),
each holding DeepSpeed's files, `hf/` (model config + tokenizer, so the tag consolidates on its own),
`rng_state_<rank>.pt`, and last `COMPLETE` (the list of files written, added only after every rank
finished). `latest` names the newest complete tag and is replaced atomically.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import torch

from .. import distributed
from ..atomic import atomic_file
from ..rng import RngState

log = logging.getLogger(__name__)
MANIFEST = "COMPLETE"
TAG = re.compile(r"^step-(\d+)$")


def tag_for(step: int) -> str:
    return f"step-{step}"


def held_values(param: torch.Tensor) -> torch.Tensor:
    """The values of `param` this rank holds: its ZeRO-3 partition without the padding, or the whole tensor.

    DeepSpeed pads the last partitions of a parameter whose size the world does not divide with uninitialised
    memory, which may hold any bit pattern (NaN included): it is not part of the weights. A partition swapped
    out to NVMe holds nothing in memory: empty.
    """
    partition = getattr(param, "ds_tensor", None)
    if partition is None:
        return param.detach()
    start = partition.ds_numel * torch.distributed.get_rank(group=param.ds_process_group)
    return partition.detach().narrow(0, 0, max(0, min(partition.numel(), param.ds_numel - start)))


def weights_finite(engine) -> bool:
    """True when every rank's weights (its ZeRO-3 partitions, or the whole module) are finite."""
    finite = all(torch.isfinite(held_values(p)).all() for p in engine.module.parameters())
    return distributed.every_rank(finite)


def save(engine, root, step: int, client_state: dict, model_config, tokenizer, keep: int | None,
         hf_files: dict[str, str] | None = None) -> Path:
    """Save a checkpoint of every rank; mark it complete and point `latest` at it only when all are done.

    `hf_files` ({name: text}) are written into the tag's `hf/` folder beside the config and tokenizer.
    """
    root = Path(root)
    tag = tag_for(step)
    tag_dir = root / tag
    if not weights_finite(engine):
        raise RuntimeError(f"the weights are not finite at step {step}: no checkpoint written "
                           "(lower the learning rate, or use fp32/bf16 with --max_grad_norm)")
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    torch.save(RngState().to_dict(), tag_dir / f"rng_state_{distributed.rank()}.pt")
    distributed.barrier()
    if distributed.is_main():
        model_config.save_pretrained(tag_dir / "hf")
        tokenizer.save_pretrained(tag_dir / "hf")
        for name, text in (hf_files or {}).items():
            (tag_dir / "hf" / name).write_text(text)
        files = sorted(str(p.relative_to(tag_dir)) for p in tag_dir.rglob("*") if p.is_file())
        with atomic_file(tag_dir / MANIFEST) as f:
            json.dump({"step": step, "world_size": distributed.world_size(), "files": files}, f, indent=1)
        with atomic_file(root / "latest") as f:
            f.write(tag)
        rotate(root, keep)
    distributed.barrier()
    return tag_dir


def incomplete_reason(tag_dir: Path) -> str | None:
    """Why a tag directory cannot be resumed from, or None when it is complete."""
    manifest = tag_dir / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} marker (the save did not finish)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"unreadable {MANIFEST} ({e})"
    missing = [f for f in files if not (tag_dir / f).is_file()]
    return f"missing files: {', '.join(missing[:5])}" if missing else None


def complete_tags(root) -> list[str]:
    """Complete checkpoint tags under `root`, oldest first; incomplete ones are logged and skipped."""
    root = Path(root)
    found = []
    for path in root.iterdir() if root.is_dir() else []:
        match = TAG.match(path.name)
        if not (match and path.is_dir()):
            continue
        reason = incomplete_reason(path)
        if reason:
            log.warning("checkpoint %s skipped: %s", path, reason)
        else:
            found.append((int(match.group(1)), path.name))
    return [name for _, name in sorted(found)]


def resolve(root, requested: str | None) -> Path | None:
    """The checkpoint to resume from: 'latest' -> newest complete tag (or None), else the given directory."""
    if requested is None:
        return None
    if requested == "latest":
        tags = complete_tags(root)
        return Path(root) / tags[-1] if tags else None
    path = Path(requested)
    if (path / "latest").is_file() and not (path / MANIFEST).exists():
        path = path / (path / "latest").read_text().strip()
    reason = incomplete_reason(path) if path.is_dir() else "no such directory"
    if reason:
        raise ValueError(f"cannot resume from {path}: {reason}")
    return path


def load(engine, tag_dir: Path) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG; returns the saved client state."""
    _, client_state = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name, load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
    if client_state is None:
        raise ValueError(f"DeepSpeed could not load the checkpoint {tag_dir}")
    rng_file = tag_dir / f"rng_state_{distributed.rank()}.pt"
    if rng_file.is_file():
        RngState.from_dict(torch.load(rng_file, weights_only=False)).restore()
    return client_state


def rotate(root, keep: int | None) -> None:
    """Delete the oldest complete checkpoints beyond `keep` (never the one `latest` names)."""
    if not keep:
        return
    root = Path(root)
    latest = (root / "latest").read_text().strip() if (root / "latest").is_file() else None
    tags = [t for t in complete_tags(root) if t != latest]
    for tag in tags[:max(0, len(tags) - (keep - 1))]:
        shutil.rmtree(root / tag, ignore_errors=True)
