"""Checkpoints that outlive the topology: a tag saved by W ranks at ZeRO stage S resumes on W' ranks at stage S'.

ZeRO 1-3 partition the fp32 master weights and Adam moments by rank, so a tag only loads into its own topology.
DeepSpeed's universal format (`ds_to_universal`) stores them per parameter, whole, and an engine built with
`"checkpoint": {"load_universal": true}` loads that into any world size and stage. A resume on another topology
converts the tag once, on rank 0, into `<checkpoints>/universal/<tag>/` (written under a temporary name, renamed
when complete, reused by later resumes), and loads from there. ZeRO-0 in fp32 keeps whole states in one file: it
resumes on any world size without conversion. What cannot be converted is refused before the engine is built.

The data order does not change: a resume on another topology must keep the queries per optimizer step
(`resume_check.queries_per_step`), so step n+1 trains on exactly the queries it would have in the saved run, only
split over other ranks. Ranks that existed in the saved run restore their RNG state; a new rank starts from
`--seed` + its rank.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
from argparse import Namespace
from pathlib import Path

import torch

from ..errors import InputError
from . import store

log = logging.getLogger(__name__)
# The engine's own states (client state, scheduler; a universal load takes the weights from zero/) are read from
# the file a ZeRO 1-2 engine names the first and a ZeRO-3 engine the second: a converted tag holds both.
STATES_FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def saved_topology(tag_dir: Path) -> tuple[int, int, bool]:
    """(world size, ZeRO stage, mixed precision) of the run that saved `tag_dir`."""
    manifest = store.read_manifest(tag_dir)
    run = (manifest.get("client_state") or {}).get("run", {})
    args = (manifest.get("client_state") or {}).get("args", {})
    return manifest["world_size"], run.get("zero_stage", 0), bool(args.get("bf16") or args.get("fp16"))


def needs_conversion(tag_dir: Path, world: int, stage: int) -> bool:
    """Whether resuming `tag_dir` on `world` ranks at ZeRO `stage` needs the universal format; an InputError where
    DeepSpeed cannot convert it (ZeRO-0 to or from another stage, ZeRO-0 in bf16/fp16 on another world size)."""
    saved_world, saved_stage, mixed = saved_topology(tag_dir)
    if (saved_world, saved_stage) == (world, stage):
        return False
    if saved_stage == 0 or stage == 0:
        if saved_stage == stage and not mixed:
            return False  # fp32 ZeRO-0: every rank's file holds the whole states
        raise InputError("--resume_from_checkpoint", f"cannot resume {tag_dir} (ZeRO-{saved_stage}, {saved_world} "
                         f"rank(s){', bf16/fp16' if mixed else ''}) at ZeRO-{stage} on {world} rank(s): DeepSpeed's "
                         "universal format converts ZeRO 1-3 checkpoints only, and ZeRO-0 resumes on another world "
                         "size in fp32 only (resume with the saved --ds_config and world size)")
    return True


def converted_dir(tag_dir: Path) -> Path:
    return tag_dir.parent / store.UNIVERSAL_DIR / tag_dir.name


def convert(tag_dir: Path) -> Path:
    """`tag_dir` in the universal format (converted now, or by an earlier resume); run on one process."""
    from deepspeed.checkpoint import ds_to_universal

    target = converted_dir(tag_dir)
    if target.is_dir():
        return target
    partial = target.parent / f".partial-{tag_dir.name}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    args = Namespace(input_folder=str(tag_dir), output_folder=str(partial / tag_dir.name), num_extract_workers=1,
                     num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            ds_to_universal.main(args)
        name_states_for_every_stage(partial / tag_dir.name)
        global_state_for_every_stage(partial / tag_dir.name / "zero")
    except Exception as e:
        tail = " | ".join(said.getvalue().strip().splitlines()[-3:])
        raise InputError(tag_dir, f"DeepSpeed's universal conversion failed: {e!r} ({tail})") from None
    else:
        (partial / tag_dir.name).rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("converted %s to DeepSpeed's universal format in %s", tag_dir, target)
    return target


def name_states_for_every_stage(folder: Path) -> None:
    """Link the engine-states file under the name each ZeRO stage's engine looks for."""
    source = next(folder / name for name in STATES_FILES if (folder / name).is_file())
    for name in STATES_FILES:
        if not (folder / name).exists():
            os.link(source, folder / name)


def global_state_for_every_stage(zero_dir: Path) -> None:
    """Write the optimizer's step and global state in the form both loaders read.

    DeepSpeed writes them in the saving stage's form: from ZeRO 1-2, a `step.pt` in each parameter's folder and the
    global state (with `ds_version`) at the top level of `zero/optimizer_state.pt`, where a ZeRO 1-2 engine reads
    them; from ZeRO-3, the step and hyper-parameters inside a nested `optimizer_state_dict`, where a ZeRO-3 engine
    reads them. Likewise each parameter's weights and moments: ZeRO-3 writes them flat, ZeRO 1-2 in a dict with
    their shape. This writes both forms (the global file then holds no tensor state but the step).
    """
    import deepspeed
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT, PARAM, PARAM_GROUPS, PARAM_SHAPES

    shapes = {name: shape for group in torch.load(zero_dir.parent / STATES_FILES[1], weights_only=False).get(
        PARAM_SHAPES, []) for name, shape in group.items()}
    for file in zero_dir.glob("*/*.pt"):  # ZeRO-3 writes bare flat tensors, ZeRO 1-2 {PARAM: tensor} of its shape
        value = torch.load(file, weights_only=False)
        if isinstance(value, torch.Tensor) and file.name != "step.pt":
            torch.save({PARAM: value.view(shapes[file.parent.name])}, file)
    path = zero_dir / "optimizer_state.pt"
    saved = torch.load(path, weights_only=False)
    folders = [p for p in sorted(zero_dir.iterdir()) if p.is_dir()]
    nested = saved.get(OPTIMIZER_STATE_DICT)
    step = nested["state"][0]["step"] if nested else torch.load(folders[0] / "step.pt", weights_only=False)
    for folder in folders:
        if not (folder / "step.pt").is_file():
            torch.save(step, folder / "step.pt")
    light = {key: value for key, value in saved.items()
             if key not in (OPTIMIZER_STATE_DICT, "fp32_flat_groups") and not isinstance(value, torch.Tensor)}
    light.setdefault("ds_version", deepspeed.__version__)
    light[OPTIMIZER_STATE_DICT] = {"state": {0: {"step": step}}, PARAM_GROUPS: light[PARAM_GROUPS]}
    torch.save(light, path)


def separate_steps(engine) -> None:
    """Give every optimizer state its own step counter after a universal load.

    DeepSpeed's ZeRO-3 universal loader puts one step tensor into the state of every parameter group, and torch's
    Adam increments the step in place, once per group: with two groups (decayed and not) the second group's bias
    correction would run a step ahead at every step.
    """
    for state in engine.optimizer.optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()
