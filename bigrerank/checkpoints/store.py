"""DeepSpeed checkpoints that are complete or ignored: per-rank RNG, a completion manifest, an atomic
`latest` pointer and rotation.

Layout under `<output_dir>/checkpoints/`: one DeepSpeed tag directory per saved step (`step-<N>/`),
each holding DeepSpeed's files, `hf/` (model config + tokenizer, so the tag consolidates on its own),
`rng_state_<rank>.pt`, and last `COMPLETE` (the files written with their sizes and xxh3 checksums, and the run's
client state; added only after every rank finished, and removed before any rank writes when a tag is saved again).
The `latest` pointer is replaced atomically after each complete save.

A tag is complete when its marker is there and every file it lists has its size (cheap: listing, rotation).
Before a tag is read (resume, consolidation) `damaged` also compares every file's checksum, which finds a file
overwritten in place with the same size; the ranks share that work.

"latest" has one meaning everywhere (`latest`: resume, rotation, consolidation): the tag the pointer names,
when it is complete; else the newest complete tag before it (a re-save of that tag was cut short); without a
pointer (a tag copied by hand), the newest complete tag.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import torch
import xxhash

from .. import distributed
from ..atomic import atomic_file
from ..errors import InputError
from ..rng import RngState

log = logging.getLogger(__name__)
MANIFEST = "COMPLETE"
UNIVERSAL_DIR = "universal"  # <checkpoints>/universal/<tag>/: a tag converted for another topology (universal.py)
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
         hf_files: dict[str, str] | None = None, protect: str | None = None) -> Path:
    """Save a checkpoint of every rank; mark it complete and point `latest` at it only when all are done.

    `client_state` must be JSON-serialisable: the manifest records it, so a resume can compare settings
    before loading anything. `hf_files` ({name: text}) are written into the tag's `hf/` folder beside the
    config and tokenizer. Rotation spares the tag `protect` (the best checkpoint) as it spares `latest`.
    """
    root = Path(root)
    tag = tag_for(step)
    tag_dir = root / tag
    if not weights_finite(engine):
        raise RuntimeError(f"the weights are not finite at step {step}: no checkpoint written "
                           "(lower the learning rate, or use fp32/bf16 with --max_grad_norm)")
    if distributed.is_main():  # a tag saved again is incomplete from its first written byte on
        (tag_dir / MANIFEST).unlink(missing_ok=True)
    distributed.barrier()
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    torch.save(RngState().to_dict(), tag_dir / f"rng_state_{distributed.rank()}.pt")
    if distributed.is_main():
        model_config.save_pretrained(tag_dir / "hf")
        tokenizer.save_pretrained(tag_dir / "hf")
        for name, text in (hf_files or {}).items():
            (tag_dir / "hf" / name).write_text(text)
    distributed.barrier()
    files = distributed.gather(sorted(str(p.relative_to(tag_dir)) for p in tag_dir.rglob("*")
                                      if p.is_file() and p.name != MANIFEST) if distributed.is_main() else None)[0]
    sums = checksums(tag_dir, files)
    if distributed.is_main():
        manifest = {"step": step, "world_size": distributed.world_size(), "files": files,
                    "sizes": {name: (tag_dir / name).stat().st_size for name in files}, "checksums": sums,
                    "client_state": client_state, "master_weight_groups": master_weight_groups(engine)}
        with atomic_file(tag_dir / MANIFEST) as f:
            json.dump(manifest, f, indent=1)
        with atomic_file(root / "latest") as f:
            f.write(tag)
        rotate(root, keep, protect)
    distributed.barrier()
    return tag_dir


def master_weight_groups(engine) -> list[list[str]] | None:
    """ZeRO-0 in bf16/fp16: the parameter names of each of the optimizer's fp32 master groups, in order.

    DeepSpeed saves those master copies in the model-states file without names; consolidation pairs them
    with these. None where the checkpoint needs no names (fp32, ZeRO 1-3: `zero_to_fp32` reads them).
    """
    groups = getattr(engine.optimizer, "fp16_groups", None) if engine.zero_optimization_stage() == 0 else None
    if groups is None:
        return None
    names = {id(param): name for name, param in engine.module.named_parameters()}
    return [[names[id(param)] for param in group] for group in groups]


def read_manifest(tag_dir: Path) -> dict:
    """The COMPLETE manifest of a tag (call only on a complete tag)."""
    return json.loads((Path(tag_dir) / MANIFEST).read_text())


def incomplete_reason(tag_dir: Path) -> str | None:
    """Why a tag directory cannot be resumed from, or None when it is complete."""
    manifest = tag_dir / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} marker (the save did not finish)"
    try:
        record = json.loads(manifest.read_text())
        files, sizes = record["files"], record.get("sizes", {})
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable {MANIFEST} ({e})"
    missing = [f for f in files if not (tag_dir / f).is_file()]
    if missing:
        return f"missing files: {', '.join(missing[:5])}"
    for name in files:
        found, size = (tag_dir / name).stat().st_size, sizes.get(name)
        if size is not None and found != size:
            return f"{tag_dir / name} has {found} bytes, the save wrote {size} (truncated or replaced)"
    return None


def file_checksum(path: Path) -> str:
    """xxh3 of the file, read through one reused 1 MiB buffer (the export's memory bound counts every buffer)."""
    digest, buffer = xxhash.xxh3_64(), bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while read := f.readinto(buffer):
            digest.update(view[:read])
    return digest.hexdigest()


def checksums(tag_dir: Path, names: list[str], shared: bool = True) -> dict[str, str]:
    """{name: xxh3 checksum} of the files `names`; `shared` (collective): each rank hashes every world-th one and
    every rank gets them all."""
    if not shared:
        return {name: file_checksum(tag_dir / name) for name in names}
    mine = {name: file_checksum(tag_dir / name) for name in names[distributed.rank()::distributed.world_size()]}
    return {name: value for share in distributed.gather(mine) for name, value in share.items()}


def damaged(tag_dir: Path, shared: bool = False) -> str | None:
    """Why a complete tag's files cannot be trusted (a file whose checksum is not the one saved), or None.

    `shared`: collective, each rank checks a share and every rank gets the same answer. A tag saved without
    checksums is checked for its sizes only."""
    tag_dir = Path(tag_dir)
    reason = incomplete_reason(tag_dir)
    if reason:
        return reason
    saved = read_manifest(tag_dir).get("checksums") or {}
    found = checksums(tag_dir, sorted(saved), shared)
    bad = [name for name in sorted(saved) if found[name] != saved[name]]
    if bad:
        return (f"{tag_dir / bad[0]} is damaged: its content is not what the save wrote (checksum)"
                + (f", and {len(bad) - 1} more file(s)" if len(bad) > 1 else ""))
    return None


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


def latest(root) -> Path | None:
    """The checkpoint "latest" means (see the module docstring), or None when there is none."""
    root = Path(root)
    pointer = root / "latest"
    named = pointer.read_text().strip() if pointer.is_file() else None
    bound = int(TAG.match(named).group(1)) if named and TAG.match(named) else None
    tags = [t for t in complete_tags(root) if bound is None or int(TAG.match(t).group(1)) <= bound]
    if named and tags and tags[-1] != named:
        log.warning("checkpoint %s ('latest') is not complete: using %s", root / named, tags[-1])
    return root / tags[-1] if tags else None


def is_save_dir(path: Path) -> bool:
    """A directory of checkpoint tags (with a `latest` pointer or step-N folders), not a tag itself."""
    return path.is_dir() and not (path / MANIFEST).exists() and (
        (path / "latest").is_file() or any(TAG.match(p.name) and p.is_dir() for p in path.iterdir()))


def resume_point(root, requested: str | None) -> Path | None:
    """The checkpoint to resume from: 'latest' -> `latest(root)` (or None); an output or save dir -> its
    `latest`; else a tag directory, which must be complete."""
    if requested is None:
        return None
    if requested == "latest":
        return latest(root)
    path = Path(requested)
    if is_save_dir(path / "checkpoints"):  # a run's output directory
        path = path / "checkpoints"
    if is_save_dir(path):
        found = latest(path)
        if found is None:
            raise InputError("--resume_from_checkpoint", f"cannot resume from {path}: no complete checkpoint in it")
        return found
    reason = incomplete_reason(path) if path.is_dir() else "no such checkpoint directory"
    if reason:
        raise InputError("--resume_from_checkpoint", f"cannot resume from {path}: {reason}")
    return path


def trusted(tag_dir: Path, fall_back: bool) -> Path:
    """`tag_dir` when its files are intact (`damaged`, the ranks sharing the work); else, with `fall_back` (a resume from
    'latest'), the newest older complete tag that is, said in the log; else an InputError naming the damaged file."""
    tag_dir = Path(tag_dir)
    while True:
        reason = damaged(tag_dir, shared=True)
        if reason is None:
            return tag_dir
        step = int(TAG.match(tag_dir.name).group(1)) if TAG.match(tag_dir.name) else None
        older = [t for t in complete_tags(tag_dir.parent) if step is not None and int(TAG.match(t).group(1)) < step]
        if not (fall_back and older):
            raise InputError("--resume_from_checkpoint", f"cannot resume from {tag_dir}: {reason}")
        log.warning("checkpoint %s cannot be resumed from (%s): resuming from the previous one, %s", tag_dir.name,
                    reason, older[-1])
        tag_dir = tag_dir.parent / older[-1]


def load(engine, tag_dir: Path, states_dir: Path | None = None) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG; returns the saved client state. `states_dir`: the
    tag's engine states in another form (its universal conversion), the RNG still from `tag_dir`."""
    states_dir = states_dir or tag_dir
    _, client_state = engine.load_checkpoint(str(states_dir.parent), tag=states_dir.name, load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
    if client_state is None:
        raise ValueError(f"DeepSpeed could not load the checkpoint {states_dir}")
    rng_file = tag_dir / f"rng_state_{distributed.rank()}.pt"
    if rng_file.is_file():
        RngState.from_dict(torch.load(rng_file, weights_only=False)).restore()
    return client_state


def rotate(root, keep: int | None, protect: str | None = None) -> None:
    """Delete the oldest complete checkpoints beyond `keep`, never the one `latest` means nor `protect`; those two
    count towards `keep` (as Hugging Face keeps the best: `keep` 1 may leave both)."""
    if not keep:
        return
    root = Path(root)
    newest = latest(root)
    complete = complete_tags(root)
    spared = {newest.name if newest else None, protect} & set(complete)
    tags = [t for t in complete if t not in spared]
    for tag in tags[:max(0, len(tags) - max(0, keep - len(spared)))]:
        shutil.rmtree(root / tag, ignore_errors=True)
        shutil.rmtree(root / UNIVERSAL_DIR / tag, ignore_errors=True)
