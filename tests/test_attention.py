"""The accelerator attention path (``jax.nn.dot_product_attention``, chosen on GPU/TPU) computes what the CPU path
computes: whole-model logits (encoder self-attention, causal decoder, cross-attention), the decoding prefill and a
cached decoding step with per-row offsets, forced on here with ``model.FUSED_ATTENTION``."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jax_whisper.model as M
from jax_whisper.config import WhisperConfig

SEED = 20261201


def _run(cfg, fused: bool, monkeypatch):
    calls = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(M, "FUSED_ATTENTION", fused)
    m = M.Whisper(cfg, rngs=nnx.Rngs(SEED))
    m.eval()
    r = np.random.default_rng(SEED)
    mel = jnp.asarray(r.standard_normal((2, cfg.n_mels, 2 * cfg.n_audio_ctx), np.float32))
    tok = jnp.asarray(r.integers(0, cfg.n_vocab, (2, 6)))
    prompt = np.zeros((2, 8), np.int32)
    prompt[0, :3], prompt[1, :5] = [1, 2, 3], [4, 5, 6, 7, 8]
    g, state = nnx.split(m)

    @jax.jit  # traced afresh for each setting (the decoding module's own jitted pieces would reuse a trace)
    def run(state):
        model = nnx.merge(g, state)
        full = model(mel, tok)
        feats = model.embed_audio(mel)
        cache = model.init_cache(feats)
        first, cache = model.logits(jnp.asarray(prompt), feats, cache, select=jnp.asarray([[2], [4]]))
        step, _ = model.logits(tok[:, :1], feats, cache.replace(offset=jnp.asarray([3, 5])))
        return full, first[:, 0], step[:, 0]

    out = run(state)
    assert bool(calls) == fused, f"dot_product_attention called {len(calls)} times with fused={fused}"
    return out


def test_fused_attention_equals_the_cpu_path(monkeypatch):
    cfg = WhisperConfig.preset("tiny.en")  # 1500 audio positions: the CPU path's row/chunk loop against the fused one
    ours, fused = _run(cfg, False, monkeypatch), _run(cfg, True, monkeypatch)
    for name, a, b in zip(("whole model", "prefill", "cached step"), ours, fused, strict=True):
        rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
        worst = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
        assert rel <= 1e-5 and worst <= 1e-5, f"seed {SEED}: {name} rel-L2 {rel:.2e}, max-abs {worst:.2e}"


def test_fused_attention_is_the_default_off_cpu_only():
    assert M.FUSED_ATTENTION is None
    assert M.fused_attention() == (jax.default_backend() != "cpu")
