"""Worker processes' memory allocator: reuse freed chunk buffers instead of faulting in new pages.

Dask's nanny starts every worker process with ``MALLOC_TRIM_THRESHOLD_=65536`` (its config
``distributed.nanny.pre-spawn-environ``) so that freed memory goes back to the OS. Setting
any glibc threshold by environment also turns off glibc's *dynamic* mmap threshold, so every
allocation above 128 KiB is a fresh ``mmap``: each chunk task's buffers (a 512² × 3 float32
chunk is 3 MiB; source windows, warp coordinates, the encoded bytes) are zero-filled page by
page and unmapped again. Measured on W8 (8 × 4096², one worker process): 37.7 s with the
nanny's setting against 25.3 s with the thresholds below, for +32 MiB of peak worker memory
(benchmarks/README.md, ``python -m benchmarks.cluster_scaling``).

:class:`AllocatorPlugin` sets, on each worker process started that way, what glibc's dynamic
rule converges to on 64-bit: buffers up to 32 MiB come from the heap and are reused, a free
heap top above 64 MiB is still returned to the OS, and anything larger is still mmapped.
A deployment that sets ``MALLOC_MMAP_THRESHOLD_`` itself keeps its own choice, and a process
without the nanny's setting (the in-process threads cluster: the user's own process) is left
alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping

from distributed.diagnostics.plugin import WorkerPlugin

_MIB = 1024 * 1024
M_TRIM_THRESHOLD = -1  # glibc <malloc.h> mallopt parameters
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * _MIB  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # the dynamic rule keeps trim at twice the mmap threshold


def needs_tuning(environ: Mapping[str, str]) -> bool:
    """Whether this process was started with a static trim threshold (Dask's nanny) and no
    mmap threshold of its own: glibc then mmaps every buffer above 128 KiB afresh."""
    return "MALLOC_TRIM_THRESHOLD_" in environ and "MALLOC_MMAP_THRESHOLD_" not in environ


def tune_allocator(environ: Mapping[str, str] | None = None) -> bool:
    """Set the mmap and trim thresholds of this process's glibc malloc when
    :func:`needs_tuning`; True when they were set (False elsewhere, and off glibc)."""
    if not sys.platform.startswith("linux") or not needs_tuning(
        os.environ if environ is None else environ
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt, nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


class AllocatorPlugin(WorkerPlugin):
    """Runs :func:`tune_allocator` on every worker, now and on each one that joins later."""

    name = "mosaicflow-allocator"

    def setup(self, worker: object) -> None:
        tune_allocator()
