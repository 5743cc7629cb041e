"""Memory for scoring: keep the large arrays' pages instead of asking the kernel anew.

Scoring a batch of full-size radar frames makes and drops dozens of arrays of hundreds of MB
(fields, masks, float64 sums, pysteps' interpolation weights). By default glibc hands each
array its own mapping and returns it to the kernel when freed, and NumPy asks for huge pages
for it; the next array faults in every page again, zeroed, and where the kernel compacts
memory for huge pages on a fault (THP defrag=madvise, a common default) that costs more than
the arithmetic. Measured on the KNMI day's 760 x 696 frames (2 cores, docs/benchmarks.md):
the kernel's share of scoring's CPU time fell from about half to 3 %.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

import numpy as np

log = logging.getLogger(__name__)

# mallopt(3) parameters.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_GIB = 1 << 30


def keep_freed_memory() -> None:
    """Make this process reuse the memory of freed large arrays, for good.

    NumPy stops asking for huge pages; on glibc, arrays up to 1 GiB come from the heap, a
    freed one stays there for the next (the resident size stays near its peak), and threads
    share one heap, so those of the forecasters reuse it too. Call it before the threads
    start: TensorFlow's, on import. Elsewhere than glibc only NumPy's part applies.
    """
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    multiarray._set_madvise_hugepage(False)
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, Windows, musl builds)
        log.debug("no mallopt in the C library (%s): freed memory goes back as usual", name)
        return
    for parameter, value in (
        (_M_ARENA_MAX, 1),
        (_M_MMAP_THRESHOLD, _GIB),
        (_M_TRIM_THRESHOLD, 2 * _GIB),
    ):
        mallopt(parameter, value)
