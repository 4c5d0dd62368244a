"""`torch.compile` for scoring, trusted only after it agrees with eager.

Inductor's generated kernels can fail to build or compute wrong numbers on some CPUs and kernel sets (a C++
compile error with ATen's `default` kernels, NaN scores with forced AVX2 kernels). `CheckedCompile` scores the
first batch of every input layout (the inputs given, and which dimensions are 1: what a dynamic-shape graph is
specialised on, so each new graph is checked) both compiled and eager. When compiling fails, or the compiled
scores differ from eager beyond the tolerance, it warns once, naming the reason, and scores eagerly from then on:
compiled scores are never silently wrong.

Tolerance, |compiled - eager| <= atol + rtol * |eager|: fp32 1e-4 and 1e-4 (fused kernels reorder float32 sums:
differences of ~1e-6 on scores of size ~1); bf16 and fp16 5e-2 and 5e-2 (a few half-precision roundings of
2^-8 each, in another order). A NaN or infinity where eager has a finite score is always a mismatch.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger("bigrerank.rerank")
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (5e-2, 5e-2), torch.float16: (5e-2, 5e-2)}


def layout(batch: dict) -> tuple:
    """What a dynamic-shape graph is specialised on: the inputs given and which of their dimensions are 1."""
    return tuple((name, tuple(size == 1 for size in value.shape)) for name, value in sorted(batch.items()))


def mismatch(compiled: torch.Tensor, eager: torch.Tensor, dtype: torch.dtype) -> str | None:
    """Why `compiled` scores are not `eager`'s within the tolerance of `dtype` (None: they are)."""
    atol, rtol = TOLERANCE.get(dtype, TOLERANCE[torch.bfloat16])
    compiled, eager = compiled.float(), eager.float()
    if compiled.shape != eager.shape:
        return f"compiled scores have shape {tuple(compiled.shape)}, eager {tuple(eager.shape)}"
    if not torch.isfinite(compiled[torch.isfinite(eager)]).all():
        return "compiled scores are not finite where eager ones are"
    error = (compiled - eager).abs()
    bound = atol + rtol * eager.abs()
    finite = torch.isfinite(eager)
    if (error[finite] > bound[finite]).any():
        return (f"compiled scores differ from eager by up to {error[finite].max().item():.3g} "
                f"(tolerance {atol:g} + {rtol:g} x |score|)")
    return None


class CheckedCompile:
    """Calls as `eager(**batch)` -> scores: `torch.compile(eager)`'s, once its first batch of each layout has matched
    eager's; eager's for good after a failure or a mismatch (one warning)."""

    def __init__(self, eager: Callable[..., torch.Tensor], dtype: torch.dtype):
        self.eager, self.dtype = eager, dtype
        self.compiled = torch.compile(eager, dynamic=True)  # one dynamic-shape graph, compiled at the first batch
        self.checked: set[tuple] = set()
        self.fallback_reason: str | None = None

    def __call__(self, **batch) -> torch.Tensor:
        if self.fallback_reason is not None:
            return self.eager(**batch)
        try:
            scores = self.compiled(**batch)
        except Exception as e:  # inductor's C++ build, or any other backend failure
            first_line = (str(e).strip().splitlines() or [""])[0]
            self._fall_back(f"compiling failed ({type(e).__name__}: {first_line[:200]})")
            return self.eager(**batch)
        key = layout(batch)
        if key in self.checked:
            return scores
        expected = self.eager(**batch)
        problem = mismatch(scores, expected, self.dtype)
        if problem:
            self._fall_back(problem)
            return expected
        self.checked.add(key)
        return scores

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        log.warning("--torch_compile: %s; scoring without compiling", reason)
