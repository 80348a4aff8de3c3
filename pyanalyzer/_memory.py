"""The C allocator's treatment of big buffers while gradient methods run.

Every optimisation step of a gradient method allocates and frees the same big tensors again
(images, spectra, activations and their gradients: megabytes to hundreds of megabytes at the
methods' batch sizes). glibc's malloc serves a buffer above its *mmap threshold* (128 KiB at
start, raised by itself only up to 32 MiB) with a fresh ``mmap`` and unmaps it when it is freed,
and hands free memory at the top of its heap back to the kernel above its *trim threshold*. The
next step then touches every page anew, one page fault per 4 KiB: measured on the project's
2-core machine, an elementwise op on a 30 MiB tensor took 54 ms instead of 3 ms, and actmax of
relu5 on the default model spent about a quarter of its time in page faults
(``benchmarks/bench_actmax.py``).

:func:`keep_freed_buffers` raises both thresholds once, so that freed buffers stay in the
heap and the next step reuses them (what PyTorch's CPU tuning guide gets from tcmalloc or
jemalloc, without preloading a library). The cost is memory: a process keeps up to
:data:`TRIM_THRESHOLD` of freed memory (less on a small machine, :func:`thresholds`) instead of
returning it at once. It changes nothing where the C library is not glibc, where the user tuned
malloc through the environment (``MALLOC_*_`` or ``GLIBC_TUNABLES``), or where
``PYANALYZER_MALLOC=default``. The gradient methods call it when their work starts
(:meth:`~pyanalyzer.model.gradient.GradientEngine.on`, the UpconvNet and Net2Vec training
loops); a model's parity check, which only builds the torch twin, does not.
"""

from __future__ import annotations

import ctypes
import os
import threading

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_buffers", "thresholds"]

MMAP_THRESHOLD = 256 * 2**20
"""Buffers up to this size come from the heap (and are reused) instead of a fresh mapping (at
most; a quarter of :func:`thresholds`' trim threshold on a small machine)."""

TRIM_THRESHOLD = 1024 * 2**20
"""Free memory at the top of the heap kept for reuse before it is returned to the kernel (at
most; a sixteenth of the memory the process may use on a smaller machine)."""


def thresholds() -> tuple[int, int]:
    """``(mmap threshold, trim threshold)`` in bytes for this machine: :data:`MMAP_THRESHOLD`
    and :data:`TRIM_THRESHOLD`, scaled down where the process may use less than 16 GiB (its
    machine's, container's or address-space limit, :func:`pyanalyzer.budget.physical_memory`),
    so that memory kept for reuse stays a small part of it."""
    from pyanalyzer.budget import physical_memory

    total = physical_memory()
    trim = TRIM_THRESHOLD if total is None else min(TRIM_THRESHOLD, max(32 * 2**20, total // 16))
    return min(MMAP_THRESHOLD, trim // 4), trim


_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3

_lock = threading.Lock()
_state: bool | None = None


def _user_tuned() -> bool:
    """Whether the environment already sets malloc's thresholds (then they are the user's)."""
    if os.environ.get("PYANALYZER_MALLOC", "").strip().lower() == "default":
        return True
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ):
        return True
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_buffers() -> bool:
    """Make glibc keep freed big buffers for reuse (once per process; see the module).

    Returns:
        True when the thresholds are set (now or by an earlier call), False where nothing
        was changed: not glibc, or the environment tunes malloc itself.
    """
    global _state
    with _lock:
        if _state is None:
            _state = False
            if not _user_tuned():
                try:
                    libc = ctypes.CDLL(None)
                    libc.gnu_get_libc_version  # noqa: B018 - glibc only
                    mallopt = libc.mallopt
                except (OSError, AttributeError):
                    return False
                mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
                mallopt.restype = ctypes.c_int
                mmap, trim = thresholds()
                # The trim threshold first: setting either one turns off glibc's own
                # adjustment of both, and the mmap threshold alone would leave 128 KiB trims.
                _state = bool(mallopt(_M_TRIM_THRESHOLD, trim)) and bool(
                    mallopt(_M_MMAP_THRESHOLD, mmap)
                )
        return _state
