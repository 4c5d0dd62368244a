"""glibc's hold on freed host memory: kept for reuse while scoring, handed back after loading and export.

Scoring keeps freed memory for reuse, so a CPU forward does not page-fault its activations in afresh every batch.

glibc serves blocks above its mmap threshold (128 KiB, adapting up to 32 MiB) with mmap and hands them back with
munmap when freed. A CPU forward allocates its large activations anew each batch (MiniLM-L6, 32 pairs x 256
tokens: 12-50 MB each), so every batch pays the page faults again: a [8192 x 384] x [384 x 1536] matmul into a
fresh output ran at 242 GFLOP/s against 364 into a reused one on the 2-core machine of BENCHMARKS.md. Raising
the mmap and trim thresholds keeps such blocks in the heap, at the cost of the process keeping its peak memory.

Process-wide, so `bigrerank rerank` (which owns its process) sets it at start; a library user may call it too.

Training is the other way round: building the engine frees the loaded model (its partitions kept) and an export
frees each written shard, blocks that glibc keeps in its heap below the trim threshold; `return_freed_memory`
(`malloc_trim(0)`) hands them back to the OS after each. Both are no-ops off glibc.
"""
from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _libc():
    """glibc, or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def return_freed_memory() -> bool:
    """Give the heap's free pages back to the OS (`malloc_trim(0)`); True if glibc released any."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def retain_freed_memory(limit: int = 1 << 30) -> bool:
    """Serve blocks up to `limit` bytes from the heap and keep them there when freed; True if glibc took it."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, limit))
