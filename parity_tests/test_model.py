"""Flax vs the torch reference vs openai-whisper, component by component, float32 on CPU, fresh weights."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import whisper.model as ow
from flax import nnx

from jax_whisper import model as jmodel
from parity_tests.helpers import check_close, random_inputs, random_torch_model
from torch_reference import model as tmodel

REL, ABS = 1e-5, 5e-5  # relative L2 and max-abs bounds for forward outputs (HF's Flax<->PT Whisper: 5e-5)


def _hidden(cfg, seed, n_ctx, n_state, batch=2):
    return np.random.default_rng(seed + 1).normal(0, 1, (batch, n_ctx, n_state)).astype(np.float32)


def test_sinusoids(seed):
    for length, channels in [(1500, 384), (250, 384), (1500, 1280), (7, 4)]:
        j, t = jmodel.sinusoids(length, channels), tmodel.sinusoids(length, channels)
        check_close(j, t, what="sinusoids", seed=seed, rel_l2=REL, max_abs=ABS)
        # openai-whisper computes the phase in float32: ~1e-4 off the exact values at position ~1500
        check_close(t, ow.sinusoids(length, channels), what="sinusoids vs openai-whisper (float32 phase)",
                    seed=seed, max_abs=3e-4)
    with pytest.raises(ValueError, match="even"):
        jmodel.sinusoids(10, 5)


def test_gelu_and_its_gradient(seed):
    # our GELU has its own derivative rule (model._gelu_jvp): value and gradient against torch's exact GELU
    x = np.random.default_rng(seed).normal(0, 3, (4096,)).astype(np.float32)
    g = np.random.default_rng(seed + 1).normal(0, 1, (4096,)).astype(np.float32)
    t = torch.from_numpy(x).requires_grad_()
    ref = F.gelu(t)
    ref.backward(torch.from_numpy(g))
    out, vjp = jax.vjp(jmodel._gelu, jnp.asarray(x))
    check_close(out, ref, what="gelu", seed=seed, rel_l2=REL, max_abs=ABS)
    check_close(vjp(jnp.asarray(g))[0], t.grad, what="gelu gradient", seed=seed, rel_l2=REL, max_abs=ABS)


def test_layer_norm_and_its_gradients(seed):
    # our LayerNorm has its own derivative rule (model._layer_norm_jvp): against torch's layer_norm
    rng = np.random.default_rng(seed)
    x = rng.normal(1, 3, (2, 50, 384)).astype(np.float32)
    g = rng.normal(0, 1, x.shape).astype(np.float32)
    w, b = (1 + rng.normal(0, 1, 384)).astype(np.float32), rng.normal(0, 1, 384).astype(np.float32)
    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w, b))
    ref = F.layer_norm(tx, (384,), tw, tb, 1e-5)
    ref.backward(torch.from_numpy(g))
    ln = jmodel._LayerNorm(384, rngs=nnx.Rngs(0))
    ln.scale[...], ln.bias[...] = jnp.asarray(w), jnp.asarray(b)
    gd, st = nnx.split(ln)
    out, vjp = jax.vjp(lambda st, x: nnx.merge(gd, st)(x), st, jnp.asarray(x))
    d_state, dx = vjp(jnp.asarray(g))
    check_close(out, ref, what="layer norm", seed=seed, rel_l2=REL, max_abs=ABS)
    check_close(dx, tx.grad, what="layer norm d-input", seed=seed, rel_l2=REL, max_abs=ABS)
    check_close(d_state["scale"][...], tw.grad, what="layer norm d-scale", seed=seed, rel_l2=REL, max_abs=ABS)
    check_close(d_state["bias"][...], tb.grad, what="layer norm d-bias", seed=seed, rel_l2=REL, max_abs=ABS)


def test_conv_stem(models, seed):
    cfg, tm, jm = models
    mel, _ = random_inputs(cfg, seed)
    with torch.no_grad():
        t = torch.from_numpy(mel)
        ref = F.gelu(tm.encoder.conv2(F.gelu(tm.encoder.conv1(t)))).permute(0, 2, 1)
    x = jnp.asarray(mel).transpose(0, 2, 1)
    out = jmodel._gelu(jm.encoder.conv2(jmodel._gelu(jm.encoder.conv1(x))))
    check_close(out, ref, what="conv stem", seed=seed, rel_l2=REL, max_abs=ABS)


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention(models, seed, causal):
    cfg, tm, jm = models
    n = min(cfg.n_text_ctx, 40)
    x = _hidden(cfg, seed, n, cfg.n_text_state)
    t_mask = tm.decoder.mask[:n, :n] if causal else None
    j_mask = jnp.asarray(t_mask.numpy()) if causal else None
    with torch.no_grad():
        ref, _ = tm.decoder.blocks[0].attn(torch.from_numpy(x), mask=t_mask)
    out, _ = jm.decoder.blocks[0].attn(jnp.asarray(x), mask=j_mask)
    check_close(out, ref, what=f"self-attention causal={causal}", seed=seed, rel_l2=REL, max_abs=ABS)


def test_cross_attention(models, seed):
    cfg, tm, jm = models
    x = _hidden(cfg, seed, 17, cfg.n_text_state)
    xa = _hidden(cfg, seed + 7, cfg.n_audio_ctx, cfg.n_audio_state)
    with torch.no_grad():
        ref, _ = tm.decoder.blocks[-1].cross_attn(torch.from_numpy(x), torch.from_numpy(xa))
    out, _ = jm.decoder.blocks[-1].cross_attn(jnp.asarray(x), jnp.asarray(xa))
    check_close(out, ref, what="cross-attention", seed=seed, rel_l2=REL, max_abs=ABS)


def test_residual_blocks(models, seed):
    cfg, tm, jm = models
    x = _hidden(cfg, seed, cfg.n_audio_ctx, cfg.n_audio_state)
    with torch.no_grad():
        ref, _ = tm.encoder.blocks[1].forward(torch.from_numpy(x))
    out, _ = jm.encoder.blocks[1](jnp.asarray(x))
    check_close(out, ref, what="encoder residual block", seed=seed, rel_l2=REL, max_abs=ABS)

    n = min(cfg.n_text_ctx, 30)
    x = _hidden(cfg, seed + 3, n, cfg.n_text_state)
    xa = _hidden(cfg, seed + 4, cfg.n_audio_ctx, cfg.n_audio_state)
    mask = tm.decoder.mask[:n, :n]
    with torch.no_grad():
        ref, _ = tm.decoder.blocks[0](torch.from_numpy(x), torch.from_numpy(xa), mask=mask)
    out, _ = jm.decoder.blocks[0](jnp.asarray(x), jnp.asarray(xa), mask=jnp.asarray(mask.numpy()))
    check_close(out, ref, what="decoder residual block", seed=seed, rel_l2=REL, max_abs=ABS)


@nnx.jit
def _forward(model, mel, tokens):
    return model(mel, tokens)


def test_encoder_decoder_and_model(models, seed):
    cfg, tm, jm = models
    mel, tokens = random_inputs(cfg, seed)
    with torch.no_grad():
        t_xa = tm.encoder(torch.from_numpy(mel))
        t_logits = tm.decoder(torch.from_numpy(tokens), t_xa)
        t_full = tm(torch.from_numpy(mel), torch.from_numpy(tokens))
    j_xa = nnx.jit(lambda m, x: m.encoder(x))(jm, mel)
    check_close(j_xa, t_xa, what="encoder", seed=seed, rel_l2=REL, max_abs=ABS)
    # the decoder alone, on the same audio features (the torch ones), isolates decoder error
    j_logits = nnx.jit(lambda m, t, xa: m.decoder(t, xa))(jm, tokens, t_xa.numpy())
    check_close(j_logits, t_logits, what="decoder logits", seed=seed, rel_l2=REL, max_abs=ABS)
    check_close(_forward(jm, mel, tokens), t_full, what="whole model logits", seed=seed, rel_l2=REL, max_abs=ABS)


def test_shorter_mel_windows(models, seed):
    """Bucketed training feeds shorter even-length mels; positions are sliced, odd or too long lengths fail."""
    cfg, tm, jm = models
    for n_frames in (2, 100, cfg.n_frames - 2):
        mel, tokens = random_inputs(cfg, seed + n_frames, batch=1, n_frames=n_frames, n_tokens=5)
        with torch.no_grad():
            ref = tm(torch.from_numpy(mel), torch.from_numpy(tokens))
        check_close(_forward(jm, mel, tokens), ref, what="model logits, shorter mel", seed=seed, rel_l2=REL,
                    max_abs=ABS)
    for bad in (cfg.n_frames + 2, 101):
        mel, tokens = random_inputs(cfg, seed, batch=1, n_frames=bad, n_tokens=5)
        with pytest.raises(ValueError, match="n_frames even"):
            tm(torch.from_numpy(mel), torch.from_numpy(tokens))
        with pytest.raises(ValueError, match="n_frames even"):
            jm(jnp.asarray(mel), jnp.asarray(tokens))


def _openai_model(cfg, state_dict):
    model = ow.Whisper(ow.ModelDimensions(**cfg.dims()))
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def test_torch_reference_vs_openai_whisper(models, seed):
    cfg, tm, jm = models
    peer = _openai_model(cfg, tm.state_dict())
    tm.load_state_dict(peer.state_dict(), strict=True)  # and back: the key sets are identical
    mel, tokens = random_inputs(cfg, seed)
    with torch.no_grad():
        p_xa = peer.embed_audio(torch.from_numpy(mel))
        p_logits = peer(torch.from_numpy(mel), torch.from_numpy(tokens))
        check_close(tm.embed_audio(torch.from_numpy(mel)), p_xa, what="torch ref vs openai: encoder", seed=seed,
                    rel_l2=REL, max_abs=ABS)
        check_close(tm(torch.from_numpy(mel), torch.from_numpy(tokens)), p_logits,
                    what="torch ref vs openai: logits", seed=seed, rel_l2=REL, max_abs=ABS)
    check_close(_forward(jm, mel, tokens), p_logits, what="flax vs openai: logits", seed=seed, rel_l2=REL,
                max_abs=ABS)


def test_cross_attention_logits(models, seed):
    """Every decoder layer's cross-attention logits (what word timestamps read), flax vs torch reference vs
    openai-whisper's own (its ``qkv_attention``'s ``qk``, taken with find_alignment's hooks, SDPA off)."""
    cfg, tm, jm = models
    mel, tokens = random_inputs(cfg, seed)
    peer = _openai_model(cfg, tm.state_dict())
    qks = [None] * cfg.n_text_layer
    hooks = [b.cross_attn.register_forward_hook(lambda _, ins, outs, i=i: qks.__setitem__(i, outs[-1]))
             for i, b in enumerate(peer.decoder.blocks)]
    with torch.no_grad(), ow.disable_sdpa():
        p_logits = peer(torch.from_numpy(mel), torch.from_numpy(tokens))
        t_xa = tm.encoder(torch.from_numpy(mel))
        t_logits, t_qks = tm.decoder(torch.from_numpy(tokens), t_xa, return_qk=True)
    for h in hooks:
        h.remove()
    j_logits, j_qks = nnx.jit(lambda m, t, xa: m.decoder(t, xa, return_qk=True))(jm, tokens, t_xa.numpy())
    check_close(t_logits, p_logits, what="torch ref vs openai: logits with qk", seed=seed, rel_l2=REL, max_abs=ABS)
    check_close(j_logits, t_logits, what="decoder logits with qk", seed=seed, rel_l2=REL, max_abs=ABS)
    assert len(t_qks) == len(j_qks) == cfg.n_text_layer
    for i in range(cfg.n_text_layer):
        assert t_qks[i].shape == (tokens.shape[0], cfg.n_text_head, tokens.shape[1], cfg.n_audio_ctx)
        check_close(t_qks[i], qks[i], what="torch ref vs openai: cross-attention logits", seed=seed, rel_l2=REL,
                    max_abs=ABS)
        check_close(j_qks[i], t_qks[i], what="flax vs torch ref: cross-attention logits", seed=seed, rel_l2=REL,
                    max_abs=ABS)
    with pytest.raises(ValueError, match="return_qk is for a forward pass without a cache"):
        jm.decoder(jnp.asarray(tokens), jnp.asarray(t_xa.numpy()), jm.init_cache(jnp.asarray(t_xa.numpy())),
                   return_qk=True)


def test_alignment_heads_attribute(cfg):
    """Both models carry the alignment heads (openai-whisper's default for fresh weights), checked on assignment."""
    from jax_whisper.config import alignment_heads

    tm = tmodel.Whisper(cfg)
    jm = jmodel.Whisper(cfg, rngs=nnx.Rngs(0))
    expected = tuple(map(tuple, alignment_heads(cfg)))
    assert tm.alignment_heads == jm.alignment_heads == expected
    jm.set_alignment_heads([[0, 1]])
    assert jm.alignment_heads == ((0, 1),)
    nnx.split(jm)  # a static attribute of the graph
    for bad in ([[cfg.n_text_layer, 0]], [[0, cfg.n_text_head]], [], [[0]]):
        with pytest.raises(ValueError, match="expected \\[layer, head\\] pairs within the decoder"):
            jm.set_alignment_heads(bad)
        with pytest.raises(ValueError, match="expected \\[layer, head\\] pairs within the decoder"):
            tm.set_alignment_heads(bad)


def test_loss_and_gradients(models, seed):
    """Token cross-entropy with padding ignored, and the gradient of every parameter (relative L2 <= 1e-4)."""
    from jax_whisper.formats.mapping import torch_name
    from jax_whisper.train import IGNORE_INDEX, cross_entropy
    from torch_reference.train import cross_entropy as torch_cross_entropy

    cfg, tm, jm = models
    mel, tokens = random_inputs(cfg, seed, n_frames=min(cfg.n_frames, 400))
    targets = np.roll(tokens, -1, axis=1)
    targets[0, -5:] = IGNORE_INDEX  # padding: a shorter first transcript
    targets[:, -1] = IGNORE_INDEX

    tm.zero_grad()
    t_sum, t_count = torch_cross_entropy(tm(torch.from_numpy(mel), torch.from_numpy(tokens)),
                                         torch.from_numpy(targets), label_smoothing=0.1)
    (t_sum / t_count).backward()

    def loss_fn(model):
        total, count = cross_entropy(model(mel, tokens), jnp.asarray(targets), label_smoothing=0.1)
        return total / count

    j_loss, j_grads = nnx.jit(nnx.value_and_grad(loss_fn))(jm)
    assert int(t_count) == targets.size - 5 - 1
    check_close(j_loss, t_sum / t_count, what="token cross-entropy", seed=seed, rel_l2=1e-5)
    t_grads = {name: p.grad for name, p in tm.named_parameters()}
    flat = nnx.to_flat_state(j_grads)
    assert len(flat) == len(t_grads), "every parameter has a gradient"
    for path, g in flat:
        name = torch_name(path)
        g = np.asarray(g[...])
        if path[-1] == "kernel":
            g = g.T if g.ndim == 2 else g.transpose(2, 1, 0)
        check_close(g, t_grads[name], what="gradient per parameter", seed=seed, rel_l2=1e-4)


def test_loss_ignores_padding(seed):
    """Changing logits at ignored positions changes neither the loss nor the count (both frameworks)."""
    from jax_whisper.train import IGNORE_INDEX, cross_entropy
    from torch_reference.train import cross_entropy as torch_cross_entropy

    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(2, 6, 50)).astype(np.float32)
    targets = rng.integers(0, 50, (2, 6))
    targets[1, 3:] = IGNORE_INDEX
    other = logits.copy()
    other[1, 3:] += rng.normal(size=(3, 50)).astype(np.float32) * 10
    for lg in (logits, other):
        j_sum, j_n = cross_entropy(jnp.asarray(lg), jnp.asarray(targets))
        t_sum, t_n = torch_cross_entropy(torch.from_numpy(lg), torch.from_numpy(targets))
        assert int(j_n) == int(t_n) == 9
        check_close(j_sum, t_sum, what="token cross-entropy", seed=seed, rel_l2=1e-5)
    a = float(cross_entropy(jnp.asarray(logits), jnp.asarray(targets))[0])
    b = float(cross_entropy(jnp.asarray(other), jnp.asarray(targets))[0])
    assert a == b


def test_incremental_decoding_matches_full(models, seed):
    """Feeding tokens through the key/value cache (a prompt, then one at a time) reproduces the full logits."""
    cfg, tm, jm = models
    mel, tokens = random_inputs(cfg, seed, n_tokens=min(cfg.n_text_ctx, 12))
    with torch.no_grad():
        t_xa = tm.encoder(torch.from_numpy(mel))
        full = tm.decoder(torch.from_numpy(tokens), t_xa)
        cache = tm.init_cache(t_xa)
        steps, cache = tm.decoder(torch.from_numpy(tokens[:, :4]), t_xa, cache)
        chunks = [steps]
        for i in range(4, tokens.shape[1]):
            step, cache = tm.decoder(torch.from_numpy(tokens[:, i : i + 1]), t_xa, cache)
            chunks.append(step)
        assert cache.offset == tokens.shape[1]
    check_close(torch.cat(chunks, 1), full, what="torch cached decoding vs full", seed=seed, rel_l2=REL,
                max_abs=ABS)

    xa = nnx.jit(lambda m, x: m.encoder(x))(jm, mel)
    j_full = nnx.jit(lambda m, t, a: m.decoder(t, a))(jm, tokens, xa)
    check_close(j_full, full, what="flax decoder vs torch decoder", seed=seed, rel_l2=REL, max_abs=ABS)

    @nnx.jit
    def step(m, tok, a, c):
        return m.decoder(tok, a, c)

    cache = jm.init_cache(xa)
    logits, cache = step(jm, tokens[:, :4], xa, cache)
    chunks = [logits]
    for i in range(4, tokens.shape[1]):
        logits, cache = step(jm, tokens[:, i : i + 1], xa, cache)
        chunks.append(logits)
    assert int(cache.offset) == tokens.shape[1]
    check_close(jnp.concatenate(chunks, 1), j_full, what="flax cached decoding vs full", seed=seed, rel_l2=REL,
                max_abs=ABS)

    # the same, with the token loop inside jax.lax.fori_loop under jit (static shapes)
    @nnx.jit
    def scan_decode(m, toks, a):
        c = m.init_cache(a)
        out = jnp.zeros(toks.shape + (cfg.n_vocab,), jnp.float32)

        def body(i, carry):
            out, c = carry
            lg, c = m.decoder(jax.lax.dynamic_slice_in_dim(toks, i, 1, axis=1), a, c)
            return jax.lax.dynamic_update_slice_in_dim(out, lg, i, axis=1), c

        out, c = jax.lax.fori_loop(0, toks.shape[1], body, (out, c))
        return out, c.offset

    looped, offset = scan_decode(jm, jnp.asarray(tokens), xa)
    assert int(offset) == tokens.shape[1]
    check_close(looped, j_full, what="flax cached decoding in fori_loop vs full", seed=seed, rel_l2=REL,
                max_abs=ABS)


def test_cache_reorder_and_bounds(models, seed):
    cfg, tm, jm = models
    mel, tokens = random_inputs(cfg, seed, batch=3, n_tokens=4)
    with torch.no_grad():
        xa = tm.encoder(torch.from_numpy(mel))
        cache = tm.init_cache(xa, max_len=6)
        _, cache = tm.decoder(torch.from_numpy(tokens), xa, cache)
        order = torch.tensor([2, 2, 0])
        re = cache.reorder(order)
        assert torch.equal(re.k[0], cache.k[0][order]) and torch.equal(re.xv[-1], cache.xv[-1][order])
        with pytest.raises(ValueError, match="kv cache holds 6"):
            tm.decoder(torch.from_numpy(tokens), xa, cache)


def test_dropout(cfg, seed):
    """Eval mode is deterministic; train mode with the same RNG seed reproduces; train differs from eval."""
    if cfg.dropout == 0:
        cfg = dataclasses.replace(cfg, dropout=0.1, attn_dropout=0.1)
    mel, tokens = random_inputs(cfg, seed, batch=1, n_frames=min(cfg.n_frames, 200), n_tokens=8)
    tm = random_torch_model(cfg, seed)
    tmel, ttok = torch.from_numpy(mel), torch.from_numpy(tokens)
    with torch.no_grad():
        tm.eval()
        e1, e2 = tm(tmel, ttok), tm(tmel, ttok)
        tm.train()
        torch.manual_seed(seed)
        t1 = tm(tmel, ttok)
        torch.manual_seed(seed)
        t2 = tm(tmel, ttok)
        t3 = tm(tmel, ttok)
    assert torch.equal(e1, e2), f"torch eval not deterministic (seed {seed})"
    assert torch.equal(t1, t2), f"torch train not reproducible (seed {seed})"
    assert not torch.equal(t1, e1) and not torch.equal(t1, t3), f"torch dropout inactive (seed {seed})"

    def flax_model():
        return jmodel.Whisper(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))

    m = flax_model()
    m.eval()
    j_e1, j_e2 = _forward(m, mel, tokens), _forward(m, mel, tokens)
    m.train()
    j_t1, j_t3 = _forward(m, mel, tokens), _forward(m, mel, tokens)
    m2 = flax_model()
    m2.train()
    j_t2 = _forward(m2, mel, tokens)
    assert np.array_equal(j_e1, j_e2), f"flax eval not deterministic (seed {seed})"
    assert np.array_equal(j_t1, j_t2), f"flax train not reproducible from the same RNG seed (seed {seed})"
    assert not np.array_equal(j_t1, j_e1) and not np.array_equal(j_t1, j_t3), f"flax dropout inactive ({seed})"
    # in eval mode the dropout-built flax model equals the torch model holding the same weights
    from jax_whisper.convert import torch_to_flax

    tm.eval()
    with torch.no_grad():
        ref = tm(tmel, ttok)
    check_close(_forward(torch_to_flax(tm.state_dict(), cfg), mel, tokens), ref, what="whole model logits",
                seed=seed, rel_l2=REL, max_abs=ABS)


# bfloat16 compute (float32 parameters, LayerNorm, softmax and residual stream): bf16 has an 8-bit mantissa
# (relative rounding 2^-9 = 2e-3 per op); through 12 layers the logits drift by a few times that.
BF16_REL_L2 = 2e-2


def test_bfloat16_compute(models, seed):
    from jax_whisper.convert import torch_to_flax

    cfg, tm, jm = models
    mel, tokens = random_inputs(cfg, seed, n_frames=min(cfg.n_frames, 400))
    j16 = torch_to_flax(tm.state_dict(), cfg, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(j16, nnx.Param)))
    out16, out32 = _forward(j16, mel, tokens), _forward(jm, mel, tokens)
    assert out16.dtype == jnp.float32
    err, _ = check_close(out16, out32, what="bfloat16 vs float32 logits", seed=seed, rel_l2=BF16_REL_L2)
    assert err > 0, "bfloat16 path computed in float32"
