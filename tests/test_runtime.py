"""``jax_whisper.runtime``: with ``keep_freed_memory`` freed large blocks are reused without page faults, and the
opt-out works; ``wide_cpu_vectors`` sets XLA's vector width only when it can take effect, and trains the same
function. Each case runs in a fresh interpreter (the settings are process-wide)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jax_whisper.runtime import _has_avx512

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


VECTORS = r"""
import json, os, sys
if sys.argv[1] == "after-jax":
    import jax
    jax.numpy.zeros(1).block_until_ready()  # the CPU backend exists: too late for XLA flags
from jax_whisper import runtime
applied = runtime.wide_cpu_vectors()
print(json.dumps({"applied": applied, "flags": os.environ.get("XLA_FLAGS"), "avx512": runtime._has_avx512()}))
"""


def _vectors(mode: str, **env) -> dict:
    env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    out = subprocess.run([sys.executable, "-c", VECTORS, mode], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout)


def test_wide_cpu_vectors_appends_the_flag_on_avx512_only():
    from jax_whisper.runtime import VECTOR_WIDTH_FLAG

    fresh = _vectors("fresh", XLA_FLAGS="--xla_cpu_enable_fast_math=false")
    if fresh["avx512"]:
        assert fresh["applied"] is True
        assert fresh["flags"] == f"--xla_cpu_enable_fast_math=false {VECTOR_WIDTH_FLAG}", fresh
    else:
        assert fresh == {"applied": False, "flags": "--xla_cpu_enable_fast_math=false", "avx512": False}


def test_wide_cpu_vectors_leaves_a_chosen_width_and_a_running_backend_alone():
    chosen = _vectors("fresh", XLA_FLAGS="--xla_cpu_prefer_vector_width=256")
    assert chosen["applied"] is False and chosen["flags"] == "--xla_cpu_prefer_vector_width=256"
    late = _vectors("after-jax", XLA_FLAGS=None)
    assert late["applied"] is False and late["flags"] is None


STEP = r"""
import json, sys
import numpy as np
from jax_whisper import runtime
if sys.argv[1] == "wide":
    assert runtime.wide_cpu_vectors()
import jax
from flax import nnx
from jax_whisper import benchmark as B, train as T
tc = B.Options(model="n_audio_layer=2,n_text_layer=2,n_audio_state=128,n_text_state=128,n_audio_head=2,n_text_head=2"
               ).train_config()
cfg = tc.model_config()
tm = T.init_model(tc, cfg)
opt = T.optimizer_for(tm, tc, 100)
batch = T.device_batch(B.train_batch(4, 200, 16, cfg.n_vocab))
kw = dict(n_mels=cfg.n_mels, label_smoothing=tc.label_smoothing, ctc_weight=tc.ctc_weight, grad_accum=1)
losses = [float(T.train_step(tm, opt, batch, **kw)["loss"]) for _ in range(2)]
params = np.concatenate([np.asarray(p).ravel() for p in jax.tree.leaves(nnx.state(tm, nnx.Param))])
np.save(sys.argv[2], params)
print(json.dumps({"losses": losses}))
"""


@pytest.mark.skipif(not _has_avx512(), reason="no AVX-512")
def test_wide_cpu_vectors_train_the_same_function(tmp_path):
    """Two train steps (dropout on) with and without 512-bit vectors: XLA only re-vectorises its own loops, so the
    losses and parameters agree to float32 rounding."""
    runs = {}
    for mode in ("default", "wide"):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        out = subprocess.run([sys.executable, "-c", STEP, mode, str(tmp_path / mode)], check=True,
                             capture_output=True, text=True, env=env)
        runs[mode] = (json.loads(out.stdout.splitlines()[-1])["losses"], np.load(tmp_path / f"{mode}.npy"))
    (la, pa), (lb, pb) = runs["default"], runs["wide"]
    assert np.allclose(la, lb, rtol=1e-6, atol=0), (la, lb)
    rel = np.linalg.norm(pa - pb) / np.linalg.norm(pa)
    max_abs = np.abs(pa - pb).max() / np.abs(pa).max()
    assert rel <= 1e-6 and max_abs <= 1e-6, (rel, max_abs)
