"""Keep freed memory in the process (glibc) so large CPU activations stop costing page faults.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
returns it with ``munmap`` when freed. A full-size CPU generation allocates and frees activations of
tens to hundreds of MiB in every layer, so each one is faulted in and zeroed by the kernel again:
a 512 px VAE decode took 1.8 M minor page faults and ~4 s of system time beside 15-17 s of user
time (1 thread). With mmap turned off and a high trim threshold, freed blocks stay in the heap and
are reused: the second decode took 1 fault and no system time; peak RSS +0.95 GiB for a full-size
fp32 benchmark run (docs/inference.md, "Speed and memory"). It is a process-wide choice, so the
console commands make it (``anydoor generate``, the benchmark), never the library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers (glibc malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 1 << 30  # hand memory back to the OS only above 1 GiB of free heap (a C int)


def keep_freed_memory() -> bool:
    """Turn glibc's mmap for large blocks off and raise the trim threshold; True when applied
    (False off Linux/glibc: nothing to do there)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
