"""Keep freed CPU memory in the process instead of returning it to the kernel.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh mmap and
unmaps it on free. A detection step at 800x1333 allocates and frees hundreds of such activations,
so every step faults all of their pages in again: on a 2-core CPU the Mask R-CNN step took 1.5x
as long, the extra time spent in the kernel (docs/BENCHMARKS.md). With mmap off and trimming off, freed
blocks go back to malloc's heap and the next step reuses them; the process keeps its peak size.

Set SOFT_D2_KEEP_FREED_MEMORY=0 to leave malloc as it is; a GLIBC_TUNABLES malloc setting is left
alone too.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_MAX = -4
ENV = "SOFT_D2_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Switch glibc malloc to keep freed memory; True when it did. A no-op (False) off Linux/glibc,
    with SOFT_D2_KEEP_FREED_MEMORY=0, or when GLIBC_TUNABLES already sets malloc options."""
    if os.environ.get(ENV, "1") == "0" or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success. The largest int threshold: trimmed only past 2 GiB free at the top.
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
