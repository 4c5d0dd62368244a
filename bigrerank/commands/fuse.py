"""`bigrerank fuse`: combine runs (e.g. BM25's and a reranker's) into one TREC run with ranx's fusion methods.

The parameters come from --weights (values, or a file a --optimize_on run saved) or are learned on --optimize_on
qrels and saved beside the output (evaluation/fuse.py).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_file
from ..data.runs import run_lines
from ..errors import InputError, UsageError
from ..evaluation.fuse import (METHODS, NORMS, PLAIN, SCALAR, WEIGHTED, Fusion, check_metric, fuse, optimize,
                               params_path, params_problem, read_fusion_file, read_runs, save_fusion)
from .parser import CommandParser, one_word


@dataclass
class FuseArguments:
    runs: list[str] = field(metadata={"help": "two or more runs (TREC, MS MARCO or score files) over the same queries"})
    output: str = field(metadata={"help": "fused TREC run to write"})
    method: str | None = field(default=None, metadata={
        "help": "ranx fusion method (default: the --weights file's, else wsum)", "choices": METHODS})
    norm: str | None = field(default=None, metadata={
        "help": "ranx score normalisation before fusing (default: the --weights file's, else min-max)",
        "choices": NORMS})
    weights: list[str] | None = field(default=None, metadata={
        "aliases": ["--params"],
        "help": "a JSON file written by --optimize_on, or values: one weight per run (wsum, wmnz, mixed, "
                "w_bordafuse, w_condorcet) or the one parameter of rrf (k), logn_isr (sigma), rbc (phi), gmnz (gamma)"})
    optimize_on: str | None = field(default=None, metadata={
        "help": "qrels to learn the method's parameters on (ranx grid search); saved to <output>.fusion.json"})
    metric: str = field(default="ndcg@10", metadata={"help": "ranx metric --optimize_on maximises, e.g. ndcg@10, mrr@10"})
    run_name: str = field(default="fused", metadata={"help": "TREC run tag (last column)"})

    def __post_init__(self):
        one_word(self, "run_name")
        try:
            check_metric(self.metric)
        except ValueError as e:
            raise UsageError(f"--metric: {e}") from None
        if len(self.runs) < 2:
            raise UsageError(f"--runs: needs at least two runs to fuse, got {len(self.runs)}")
        repeated = sorted({p for p in self.runs if self.runs.count(p) > 1})
        if repeated:
            raise UsageError(f"{repeated[0]}: given twice in --runs")
        if self.weights and self.optimize_on:
            raise UsageError("--optimize_on: learns the parameters: give it or --weights, not both")
        if self.weights_file() is None:
            self.flag_fusion()

    def weights_file(self) -> str | None:
        """--weights when it names a file (one value that is not a number), else None."""
        if not self.weights or len(self.weights) != 1:
            return None
        try:
            float(self.weights[0])
        except ValueError:
            return self.weights[0]
        return None

    def flag_fusion(self) -> Fusion:
        """The fusion the flags give without a --weights file (parameters still to learn with --optimize_on)."""
        method, norm = self.method or "wsum", self.norm or "min-max"
        if self.weights:
            return Fusion(method, norm, params_from_values(self.weights, method, len(self.runs)))
        if self.optimize_on:
            if method in PLAIN:
                raise UsageError(f"--optimize_on: --method {method} has no parameters to optimise")
            return Fusion(method, norm, {})
        if method in WEIGHTED or (method in SCALAR and SCALAR[method][1] is None):
            raise UsageError(f"--method: {method} needs --weights (values or a file) or --optimize_on QRELS")
        return Fusion(method, norm, {SCALAR[method][0]: SCALAR[method][1]} if method in SCALAR else {})


def params_from_values(values: list[str], method: str, runs: int) -> dict:
    """Parameters from --weights values: one weight per run, or the method's single parameter."""
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise UsageError("--weights: takes a JSON file written by --optimize_on, or numbers") from None
    if method in SCALAR:
        name = SCALAR[method][0]
        params = {name: (int(numbers[0]) if name == "k" and numbers[0].is_integer() else numbers[0])
                  if len(numbers) == 1 else numbers}
    else:
        params = {"weights": numbers}
    problem = params_problem(method, params, runs)
    if problem:
        raise UsageError(f"--weights: {problem}")
    return params


def check_outputs(args: FuseArguments) -> None:
    """InputError for an output (or the parameter file it brings) over an input."""
    inputs = [*args.runs, *filter(None, (args.weights_file(), args.optimize_on))]
    resolved = {Path(p).resolve(): p for p in inputs}
    written = [args.output] + ([str(params_path(args.output))] if args.optimize_on else [])
    for out in written:
        if Path(out).resolve() in resolved:
            raise InputError(out, f"the output would overwrite the input {resolved[Path(out).resolve()]}")


def chosen_fusion(args: FuseArguments) -> Fusion:
    """The fusion the arguments ask for: the --weights file's (checked against the flags), else the flags'."""
    path = args.weights_file()
    if path is None:
        return args.flag_fusion()
    saved, names = read_fusion_file(path, len(args.runs))
    for option, value in (("method", args.method), ("norm", args.norm)):
        if value is not None and value != getattr(saved, option):
            raise InputError(path, f"learned for --{option} {getattr(saved, option)}, not {value}", field=option)
    describe_params(saved, args.runs, learned_for=names)
    return saved


def describe_params(fusion: Fusion, paths: list[str], learned_for: list[str] | None = None) -> None:
    """Print the parameters, each weight beside the run it applies to (and the run it was learned for)."""
    if "weights" not in fusion.params:
        print(f"{fusion.method} parameters: {json.dumps(fusion.params)}")
        return
    for i, (weight, path) in enumerate(zip(fusion.params["weights"], paths)):
        origin = f" (learned for {learned_for[i]})" if learned_for else ""
        print(f"{fusion.method} weight {weight:g} -> {path}{origin}")


def main(argv: list[str] | None = None) -> int:
    (args,) = CommandParser(FuseArguments, "fuse").parse(argv)
    check_outputs(args)
    fusion = chosen_fusion(args)
    runs, names = read_runs(args.runs), [Path(p).name for p in args.runs]
    if args.optimize_on:
        fusion = optimize(fusion, runs, names, args.optimize_on, args.metric)
        save_fusion(params_path(args.output), fusion, names, args.optimize_on, args.metric)
        describe_params(fusion, args.runs)
        print(f"saved the learned parameters -> {params_path(args.output)}")
    fused = fuse(fusion, runs, names)
    with atomic_file(args.output, "w", encoding="utf-8") as f:
        f.writelines(run_lines(fused, "trec", args.run_name))
    print(f"bigrerank fuse: {fusion.method} ({fusion.norm} normalised) of {len(runs)} runs, {len(fused)} queries "
          f"-> {args.output}", file=sys.stderr)
    return 0
