"""The output directory of training: its mistakes found before any model loads, and a previous run's outputs
never silently mixed with, or lost to, a new run.

- A fresh run refuses an `--output_dir` holding a previous run's outputs (`checkpoints/`, `train_log.jsonl`,
  an exported model), as Hugging Face's Trainer does, unless `--overwrite_output_dir`: then exactly those are
  deleted (never other files), and only once the run's inputs are validated, just before it writes.
- A resume from the directory's own checkpoints (`--resume_from_checkpoint latest`, or a tag inside it)
  continues that run. `latest` with nothing complete to resume starts a fresh run and says so: slurm passes
  it on a job's first run too, and a requeued run that died before its first checkpoint starts over (an
  exported model there is still refused: it is a finished run's).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..checkpoints import store
from ..checkpoints.consolidate import exported_files
from ..errors import InputError
from ..model import max_len_problem
from .. import distributed

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.jsonl"


def previous_outputs(output_dir) -> list[Path]:
    """What an earlier run left in `output_dir`: a non-empty checkpoints/, train_log.jsonl, its exported files."""
    output_dir = Path(output_dir)
    checkpoints, train_log = output_dir / CHECKPOINTS, output_dir / TRAIN_LOG
    found = [checkpoints] if checkpoints.is_dir() and any(checkpoints.iterdir()) else []
    found += [train_log] if train_log.exists() else []
    return found + exported_files(output_dir)


def check_writable(output_dir: Path) -> None:
    """The output directory is a directory we may write into, or can be created."""
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(output_dir, "--output_dir is a file, not a directory")
    existing = next(p for p in (output_dir, *output_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise InputError(output_dir, f"--output_dir cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(output_dir, f"--output_dir is not writable ({existing} denies writing)")


def check(data_args, args, model_config, model_path: str) -> Path | None:
    """Refuse the run's mistakes about lengths and directories (before any model loads); return the checkpoint
    to resume from, or None for a fresh run."""
    problem = max_len_problem(data_args.max_len, getattr(model_config, "max_position_embeddings", None))
    if problem:
        raise InputError(model_path, f"--max_len: {problem}")
    output_dir = Path(args.output_dir)
    check_writable(output_dir)
    root = output_dir / CHECKPOINTS
    resume = store.resume_point(root, args.resume_from_checkpoint)
    if args.resume_from_checkpoint == "latest" and resume is None:
        log.warning("--resume_from_checkpoint latest: no complete checkpoint in %s, starting a fresh run", root)
    continues_own = resume is not None and root.resolve() in resume.resolve().parents
    if args.overwrite_output_dir and (continues_own or args.resume_from_checkpoint == "latest"):
        raise InputError(output_dir, "--overwrite_output_dir would delete the checkpoints that "
                                     f"--resume_from_checkpoint {args.resume_from_checkpoint} resumes from")
    found = previous_outputs(output_dir)
    # `latest` with nothing to resume: what is there was left by a run that never checkpointed (no model)
    leftovers = args.resume_from_checkpoint == "latest" and not exported_files(output_dir)
    if found and not (continues_own or leftovers or args.overwrite_output_dir):
        exported = exported_files(output_dir)
        names = ", ".join([p.name for p in found if p not in exported] + (["an exported model"] if exported else []))
        hint = ("it has no checkpoint to resume: start over with --overwrite_output_dir (without "
                "--resume_from_checkpoint latest)" if args.resume_from_checkpoint == "latest" else
                "continue it with --resume_from_checkpoint latest, or start over with --overwrite_output_dir")
        raise InputError(output_dir, f"--output_dir holds a previous run ({names}): {hint}")
    return resume


def clear_previous(args) -> None:
    """--overwrite_output_dir: delete the previous run's outputs (rank 0; every rank waits)."""
    if args.overwrite_output_dir and distributed.is_main():
        for path in previous_outputs(args.output_dir):
            log.warning("--overwrite_output_dir: deleting %s", path)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    distributed.barrier()
