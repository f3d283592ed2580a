"""The layer scan (``AudioEncoder.scan`` / ``TextDecoder.scan``) is the unrolled loop: same loss, gradients and
dropout masks, and it leaves each layer's dropout stream where the unrolled loop leaves it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_whisper.config import WhisperConfig
from jax_whisper.model import Whisper

SEED = 0


def _run(scan: bool, cfg: WhisperConfig):
    m = Whisper(cfg, rngs=nnx.Rngs(params=SEED, dropout=SEED + 1))
    m.train()
    m.encoder.scan = m.decoder.scan = scan
    r = np.random.default_rng(SEED)
    mel = jnp.asarray(r.standard_normal((2, cfg.n_mels, 40), np.float32))
    tok = jnp.asarray(r.integers(0, cfg.n_vocab, (2, 7)))

    @nnx.jit
    def step(m):
        return nnx.value_and_grad(lambda m: jnp.mean(m(mel, tok) ** 2))(m)

    out = [step(m) for _ in range(2)]  # the second step draws fresh masks from the advanced streams
    keys = [jax.random.key_data(k) for k in jax.tree.leaves(nnx.state(m, nnx.RngKey))]
    counts = jax.tree.leaves(nnx.state(m, nnx.RngCount))
    return out, keys, counts


def test_scan_equals_unrolled_with_dropout():
    cfg = dataclasses.replace(WhisperConfig.preset("seed"), n_audio_layer=3, n_text_layer=2, n_audio_state=64,
                              n_text_state=64, n_audio_head=2, n_text_head=2, n_vocab=300, dropout=0.1,
                              attn_dropout=0.1)
    (a, ka, ca), (b, kb, cb) = _run(False, cfg), _run(True, cfg)
    for (la, ga), (lb, gb) in zip(a, b, strict=True):
        assert abs(float(la) - float(lb)) <= 1e-6 * abs(float(la)), f"seed {SEED}: loss {la} vs {lb}"
        for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
            err = float(jnp.max(jnp.abs(x - y)))
            assert err <= 1e-5 * max(float(jnp.max(jnp.abs(x))), 1e-12), f"seed {SEED}: gradient max-abs {err}"
    assert len(ca) == len(cb) and all(int(x) == int(y) for x, y in zip(ca, cb, strict=True))
    assert all(bool(jnp.all(x == y)) for x, y in zip(ka, kb, strict=True))
    assert min(int(c) for c in ca) >= 2  # every dropout stream drew masks in both steps


def test_scan_is_a_fusion_boundary_in_the_compiled_step():
    """The scanned model compiles to a loop over one block (what makes compile time independent of depth)."""
    cfg = dataclasses.replace(WhisperConfig.preset("seed"), n_audio_layer=4, n_text_layer=4, n_audio_state=64,
                              n_text_state=64, n_audio_head=2, n_text_head=2, n_vocab=300)
    mel, tok = jnp.zeros((1, cfg.n_mels, 40)), jnp.zeros((1, 5), jnp.int32)
    loops = {}
    for scan in (False, True):
        m = Whisper(cfg, rngs=nnx.Rngs(SEED))
        m.eval()
        m.encoder.scan = m.decoder.scan = scan
        graphdef, state = nnx.split(m)
        forward = jax.jit(lambda s, g=graphdef: nnx.merge(g, s)(mel, tok))
        loops[scan] = forward.lower(state).as_text().count("stablehlo.while")
    assert loops == {False: 0, True: 2}


def test_decoding_encodes_with_the_blocks_stacked_once():
    """``decoding.embed_audio`` scans the encoder over blocks stacked once per Prepared: the same output as the
    module stacking them itself, and an unrolled encoder takes no stack."""
    from jax_whisper import decoding

    cfg = dataclasses.replace(WhisperConfig.preset("seed"), n_audio_layer=3, n_audio_state=64, n_audio_head=2,
                              n_text_layer=1, n_text_state=64, n_text_head=2, n_vocab=300)
    m = Whisper(cfg, rngs=nnx.Rngs(params=SEED, dropout=SEED + 1))
    m.eval()
    mel = jnp.asarray(np.random.default_rng(SEED).standard_normal((2, cfg.n_mels, 60), np.float32))
    ref = m.embed_audio(mel)
    prepared = decoding.prepare(m)
    stacked = prepared.encoder_blocks
    assert jax.tree.leaves(stacked)[0].shape[0] == 3
    bound = 1e-6 * float(jnp.max(jnp.abs(ref)))  # float32 rounding: jitted vs eager
    err = float(jnp.max(jnp.abs(decoding.embed_audio(prepared, mel) - ref)))
    assert err <= bound, f"seed {SEED}: pre-stacked encoder differs by {err}"
    assert prepared.encoder_blocks is stacked  # made once
    m.encoder.scan = False
    unrolled = decoding.prepare(m)
    assert unrolled is not prepared and unrolled.encoder_blocks is None
    err = float(jnp.max(jnp.abs(decoding.embed_audio(unrolled, mel) - ref)))
    assert err <= bound, f"seed {SEED}: unrolled encoder differs by {err}"
