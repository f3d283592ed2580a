"""Process-level settings for the command-line entry points (never applied on import).

:func:`keep_freed_memory` stops glibc's malloc from handing large freed blocks back to the kernel. XLA's CPU
runtime allocates each executable's temporary buffer afresh per call (2.7 GB for the seed train step at batch
16); glibc serves such sizes with a fresh ``mmap`` and returns them with ``munmap``, so every step page-faults
its whole working set in again and the kernel zeroes it: measured here, ~800k page faults and 2.5-3.7 s of
system CPU time per seed step (7.6 s -> 6.4 s with this setting). PyTorch's CPU allocator goes through the same
malloc and gains too (its seed step 6.4 -> 4.9 s), so the benchmark gives every train contender the same
setting. The training scripts apply it; transcription does not: its allocations are small and frequent, and one
arena shared by all threads made a tiny.en transcription slower (1.58 vs 1.51 s median of 8, alternating
processes). The cost: the process keeps its peak heap for its lifetime.

:func:`wide_cpu_vectors` lets XLA's own CPU loops (elementwise fusions and reductions; the matmuls are library
calls) use 512-bit vectors on CPUs with AVX-512, where XLA prefers 256-bit ones by default (some Intel parts lower
their clock for 512-bit code). Measured on this project's 2-core AMD Zen 4: the seed train step ~5 % faster
(faster in each of 5 alternating process pairs), transcription unchanged, so only training applies it.
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
OPT_OUT = "JAX_WHISPER_SYSTEM_MALLOC"  # set to 1 to leave malloc as it is


def keep_freed_memory() -> bool:
    """One malloc arena, no ``mmap`` for large blocks, no trimming: freed memory is reused, not page-faulted in
    again. Call it first thing in a process, before JAX or PyTorch start their threads (a thread keeps the
    arena it first allocated from). Returns whether it applied: glibc on Linux only, and not with
    ``JAX_WHISPER_SYSTEM_MALLOC=1``."""
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT, "") not in ("", "0"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # -1 as the trim threshold is SIZE_MAX to glibc (the value is converted to size_t): never trim
    return all(mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))


VECTOR_WIDTH_FLAG = "--xla_cpu_prefer_vector_width=512"


def wide_cpu_vectors() -> bool:
    """Append ``--xla_cpu_prefer_vector_width=512`` to ``XLA_FLAGS`` when the CPU has AVX-512. XLA reads its flags
    when JAX creates its first backend, so call it before any JAX computation. Does nothing when ``XLA_FLAGS``
    already chooses a vector width, without AVX-512 (or /proc/cpuinfo), or once a JAX backend exists. Returns
    whether it applied."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_prefer_vector_width" in flags or not _has_avx512():
        return False
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None and bridge.backends_are_initialized():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {VECTOR_WIDTH_FLAG}".strip()
    return True


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "avx512f" in line.split() for line in f)
    except OSError:
        return False


__all__ = ["OPT_OUT", "VECTOR_WIDTH_FLAG", "keep_freed_memory", "wide_cpu_vectors"]
