"""What this machine computes fast: a measured matmul rate per precision, and whether its CPU has bf16 in silicon.

A CPU without AVX-512 BF16 or AMX emulates bf16 matmuls, 20-30x slower than fp32 (AMD Zen 2 measured 95 s a
training step in bf16 against about 11 s in fp32), so a bf16 run there is a mistake the user should hear about.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs whose matmul units take bf16
SLOW_BF16_RATIO = 2.0  # bf16 at least this many times slower than fp32: warn (native bf16 is faster, not slower)


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is absent, as on macOS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 matmuls natively (AVX-512 BF16 or AMX)."""
    return bool(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))


def matmul_gflops(dtype: torch.dtype, size: int = 2048, seconds: float = 3.0, device: str = "cpu") -> float:
    """Sustained GFLOP/s of a square torch.matmul, at least one timed product: the rate a FLOP count is set
    against (model-FLOPs utilisation, time estimates)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # warm-up: kernel selection, page faults
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    sync()
    count, start = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - start < seconds:
        a @ b
        count += 1
    sync()
    return 2 * size ** 3 * count / (time.perf_counter() - start) / 1e9


def bf16_slowdown(size: int = 512, seconds: float = 0.3) -> float:
    """How many times slower a bf16 matmul runs than an fp32 one on this CPU (below 1: bf16 is faster)."""
    return matmul_gflops(torch.float32, size, seconds) / matmul_gflops(torch.bfloat16, size, seconds)


def bf16_warning(slowdown: float | None = None) -> str | None:
    """One warning line where bf16 is much slower than fp32 on this CPU, with the measured ratio; else None."""
    slowdown = bf16_slowdown() if slowdown is None else slowdown
    if slowdown < SLOW_BF16_RATIO:
        return None
    why = "it emulates bf16: no AVX-512 BF16 or AMX" if not native_bf16() else "measured here"
    return (f"bf16 matmuls run {slowdown:.0f}x slower than fp32 on this CPU ({why}); "
            f"drop --bf16 to run in fp32")
