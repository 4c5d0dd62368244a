"""Keep freed host memory for reuse, so CPU scoring does not page-fault its activations in afresh every batch.

glibc serves blocks above its mmap threshold (128 KiB, adapting up to 32 MiB) with mmap and hands them back with
munmap when freed. A CPU forward allocates its large activations anew each batch (MiniLM-L6, 32 pairs x 256
tokens: 12-50 MB each), so every batch pays the page faults again: a [8192 x 384] x [384 x 1536] matmul into a
fresh output ran at 242 GFLOP/s against 364 into a reused one on the 2-core machine of BENCHMARKS.md. Raising
the mmap and trim thresholds keeps such blocks in the heap, at the cost of the process keeping its peak memory.

Process-wide, so `bigrerank rerank` (which owns its process) sets it at start; a library user may call it too.
A no-op off glibc.
"""
from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def retain_freed_memory(limit: int = 1 << 30) -> bool:
    """Serve blocks up to `limit` bytes from the heap and keep them there when freed; True if glibc took it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
