"""CPU allocator settings for the ``carafe-exp`` process: large tensors reuse freed heap memory.

glibc's malloc serves every allocation above its mmap threshold (which adapts, up to 32 MiB)
with a fresh ``mmap`` and unmaps it again when it is freed. A CPU training step allocates and
frees the same large tensors over and over (one FPN output of 2×256×100×168 float32 is 34 MB),
so each of them pays again for the kernel to map and zero its pages: 6–13 ms per 34 MB
output on the project's benchmark machine, more than the reassembly op itself takes.
Raising the mmap and trim thresholds keeps such blocks in the heap, where a freed block is
reused already mapped. The price is that the process keeps up to that much freed memory
instead of returning it to the system, as GPU caching allocators do.

:func:`configure_cpu_allocator` is called at the start of the ``carafe-exp`` process (and by the
benchmarks). ``CARAFE_EXP_CPU_ALLOCATOR=system`` keeps glibc's defaults; glibc's own settings
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``) are respected when
present; other C libraries (musl, macOS) are left alone. Needs only the standard library.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from dataclasses import dataclass

logger = logging.getLogger(__name__)

ALLOCATOR_ENV = "CARAFE_EXP_CPU_ALLOCATOR"
CHOICES = ("tuned", "system")

# mallopt parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Blocks below 1 GiB come from the heap. glibc before 2.35 refuses thresholds above 32 MiB
# (HEAP_MAX_SIZE / 2); that is then the value used.
MMAP_THRESHOLD = 1 << 30
FALLBACK_MMAP_THRESHOLD = 32 << 20
# Freed memory at the top of the heap is returned to the system beyond this much.
TRIM_THRESHOLD = 1 << 30

_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_GLIBC_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


@dataclass(frozen=True)
class AllocatorSettings:
    """What :func:`configure_cpu_allocator` did."""

    applied: bool
    reason: str
    mmap_threshold: int | None = None
    trim_threshold: int | None = None


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (the one that has mallopt and these thresholds)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def _user_settings() -> str | None:
    """The glibc malloc setting the user already made through the environment, if any."""
    for variable in _GLIBC_VARIABLES:
        if variable in os.environ:
            return variable
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    for tunable in _GLIBC_TUNABLES:
        if tunable in tunables:
            return f"GLIBC_TUNABLES={tunables}"
    return None


def configure_cpu_allocator() -> AllocatorSettings:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring).

    Safe to call more than once and on any platform: where it does nothing it says why in the
    returned settings (and in the debug log). An unknown ``$CARAFE_EXP_CPU_ALLOCATOR`` is
    reported as a one-line warning and glibc's defaults are kept.
    """
    choice = os.environ.get(ALLOCATOR_ENV, "tuned") or "tuned"
    if choice not in CHOICES:
        logger.warning(
            "$%s must be one of %s; got %r: keeping the system allocator's defaults", ALLOCATOR_ENV, ", ".join(CHOICES), choice
        )
        return AllocatorSettings(False, f"unknown ${ALLOCATOR_ENV}={choice!r}")
    if choice == "system":
        return _report(AllocatorSettings(False, f"${ALLOCATOR_ENV}=system"))
    user = _user_settings()
    if user is not None:
        return _report(AllocatorSettings(False, f"the environment sets glibc's malloc ({user})"))
    libc = _glibc()
    if libc is None:
        return _report(AllocatorSettings(False, "the C library is not glibc"))
    mmap_threshold = MMAP_THRESHOLD
    if libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1:
        mmap_threshold = FALLBACK_MMAP_THRESHOLD
        if libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1:
            return _report(AllocatorSettings(False, "glibc refused the mmap threshold"))
    if libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return _report(AllocatorSettings(False, "glibc refused the trim threshold", mmap_threshold))
    return _report(AllocatorSettings(True, "glibc mallopt", mmap_threshold, TRIM_THRESHOLD))


def _report(settings: AllocatorSettings) -> AllocatorSettings:
    if settings.applied:
        logger.debug(
            "CPU allocator: glibc mmap threshold %d MiB, trim threshold %d MiB",
            settings.mmap_threshold >> 20,
            settings.trim_threshold >> 20,
        )
    else:
        logger.debug("CPU allocator: glibc's defaults kept (%s)", settings.reason)
    return settings
