"""``jax_whisper.runtime.keep_freed_memory``: freed large blocks are reused without page faults, and the opt-out
works. Each case runs in a fresh interpreter (the setting is process-wide)."""

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json, resource, sys
from jax_whisper.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def touch(n=256 * 2**20):  # as XLA's buffers: malloc'd, written, freed (numpy would ask for huge pages)
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults():
    plain, kept = _probe("plain"), _probe("keep")
    assert kept["applied"] is True
    # a fresh 256 MB block faults in ~65k pages of 4 KB; a reused one none (a few for Python's own objects)
    assert plain["faults"] > 30_000, plain
    assert kept["faults"] < 1_000, kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_opt_out():
    assert _probe("keep", JAX_WHISPER_SYSTEM_MALLOC="1")["applied"] is False
