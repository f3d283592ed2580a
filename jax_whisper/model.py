"""Whisper in Flax NNX, mirroring ``torch_reference/model.py`` name for name and in the same order.

Parameter paths map one-to-one onto openai-whisper's state-dict keys (see ``jax_whisper.formats.mapping``). Compute
dtype is configurable: parameters, LayerNorm, softmax and the residual stream stay float32, matmuls and
convolutions run in ``dtype`` (e.g. bfloat16), the matmuls' gradients too (:func:`mixed_dot`). The decoder's
key/value cache has a fixed size and is written with ``dynamic_update_slice``, so decoding runs inside
``jax.lax.while_loop`` under ``jit``.
"""

from __future__ import annotations

import math
from functools import cache, partial

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array, lax

from jax_whisper.config import WhisperConfig, alignment_heads, checked_alignment_heads


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> Array:
    """Fixed encoder positions: [sin | cos] halves, timescales log-spaced from 1 to max_timescale.

    Computed in float64 (numpy: jax may run without x64) and rounded once: in float32 the phase
    ``t * inv_timescale`` at t ~ 1500 carries ~1e-4 of error from ``exp``'s last bit.
    """
    if channels % 2:
        raise ValueError(f"sinusoids need an even channel count, got {channels}")
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_timescale_increment * np.arange(channels // 2, dtype=np.float64))
    scaled_time = np.arange(length, dtype=np.float64)[:, None] * inv_timescales[None, :]
    return jnp.asarray(np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1), jnp.float32)


class Buffer(nnx.Variable):
    """A constant array stored with the weights (torch's ``register_buffer``); never trained."""


@flax.struct.dataclass
class KVCache:
    """Decoder key/value cache of fixed size: self-attention slots for every text position, cross-attention
    keys/values computed once per audio. ``offset`` counts the tokens already written: a scalar shared by all
    rows, or one per row (batch,)."""

    k: list[Array]  # per layer (batch, n_head, d_head, max_len), scaled (MultiHeadAttention._heads)
    v: list[Array]  # per layer (batch, n_head, max_len, d_head)
    xk: list[Array]  # per layer (batch, n_head, d_head, n_audio), scaled (MultiHeadAttention.audio_kv)
    xv: list[Array]  # per layer (batch, n_head, n_audio, d_head)
    offset: Array = 0

    def reorder(self, index: Array) -> KVCache:
        """Select batch rows (beam search)."""
        take = lambda ts: [t[index] for t in ts]  # noqa: E731
        offset = self.offset[index] if jnp.ndim(self.offset) else self.offset
        return KVCache(take(self.k), take(self.v), take(self.xk), take(self.xv), offset)

    def reorder_self(self, index: Array) -> KVCache:
        """Select batch rows of the self-attention slots only: for beams of one audio, whose cross-attention
        keys/values are equal, this skips copying the (much larger) audio side."""
        offset = self.offset[index] if jnp.ndim(self.offset) else self.offset
        return self.replace(k=[t[index] for t in self.k], v=[t[index] for t in self.v], offset=offset)


@jax.custom_jvp
def _gelu(x: Array) -> Array:
    """The exact (erf) GELU Whisper uses, as ``jax.nn.gelu(x, approximate=False)``."""
    return jax.nn.gelu(x, approximate=False)


@_gelu.defjvp
def _gelu_jvp(primals, tangents):
    # The derivative as one factor, Phi(x) + x phi(x): reverse mode then keeps that one array per call where
    # autodiff of the erfc formula kept four (the MLP's largest activations, stored once per layer).
    (x,), (t,) = primals, tangents
    cdf = 0.5 * lax.erfc(-x * np.sqrt(0.5).astype(x.dtype))
    pdf = jnp.exp(-0.5 * x * x) * np.float32(1 / math.sqrt(2 * math.pi)).astype(x.dtype)
    return jax.nn.gelu(x, approximate=False), t * (cdf + x * pdf)


# Matmuls and convolutions take their inputs in the compute dtype and accumulate and return float32: with
# bfloat16 inputs that is the fast path of bf16 hardware (AVX512-BF16 here: 327 vs 166 GFLOP/s with bf16 out).
@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _mixed_dot(x, y, dimension_numbers, dtype, x_dtype, y_dtype):
    return lax.dot_general(x.astype(dtype), y.astype(dtype), dimension_numbers, preferred_element_type=jnp.float32)


def _mixed_dot_fwd(x, y, dimension_numbers, dtype, x_dtype, y_dtype):
    xc, yc = x.astype(dtype), y.astype(dtype)  # the residuals at the compute width
    return lax.dot_general(xc, yc, dimension_numbers, preferred_element_type=jnp.float32), (xc, yc)


def _mixed_dot_bwd(dimension_numbers, dtype, x_dtype, y_dtype, res, g):
    xc, yc = res
    (x_con, y_con), (x_bat, y_bat) = dimension_numbers
    x_free = tuple(d for d in range(xc.ndim) if d not in x_con + x_bat)
    y_free = tuple(d for d in range(yc.ndim) if d not in y_con + y_bat)
    n_bat = len(x_bat)
    g_bat = tuple(range(n_bat))
    g_x = tuple(range(n_bat, n_bat + len(x_free)))  # g's axes: batch, x's free axes, y's free axes
    g_y = tuple(range(n_bat + len(x_free), g.ndim))
    # dx = g . y over y's free axes: (batch, x free, x contracted in y's order), put back in x's axis order
    dx = lax.dot_general(g.astype(dtype), yc, ((g_y, y_free), (g_bat, y_bat)), preferred_element_type=jnp.float32)
    dx = dx.transpose(np.argsort([*x_bat, *x_free, *(x_con[y_con.index(d)] for d in sorted(y_con))]))
    # dy = g . x over x's free axes (for a layer: all rows), contracting g's leading axes. XLA's CPU backend has no
    # low-precision product of that form with a float32 result ("Unsupported element type for DotThunk"), so on
    # CPU the same values multiply in float32: products of bf16 numbers are exact in float32, the sum as before.
    gc, xr = g.astype(dtype), xc
    if jax.default_backend() == "cpu":
        gc, xr = gc.astype(jnp.float32), xr.astype(jnp.float32)
    dy = lax.dot_general(gc, xr, ((g_x, x_free), (g_bat, x_bat)), preferred_element_type=jnp.float32)
    dy = dy.transpose(np.argsort([*y_bat, *y_free, *(y_con[x_con.index(d)] for d in sorted(x_con))]))
    return dx.astype(x_dtype), dy.astype(y_dtype)


_mixed_dot.defvjp(_mixed_dot_fwd, _mixed_dot_bwd)


def mixed_dot(x: Array, y: Array, dimension_numbers, dtype) -> Array:
    """``lax.dot_general`` of ``x`` and ``y`` cast to the compute ``dtype``, accumulated and returned in float32.

    In float32 that is all. Below it, the gradients are products in ``dtype`` as well: the cotangent is rounded to
    ``dtype``, both products accumulate in float32 and come back in ``x``'s and ``y``'s own dtypes (float32
    weights get an unrounded gradient). Plain autodiff would multiply the float32 cotangent by the upcast
    operands, i.e. run the backward pass, two thirds of the FLOPs, in float32 on bf16 hardware.
    """
    (x_con, y_con), (x_bat, y_bat) = dimension_numbers
    dims = ((tuple(x_con), tuple(y_con)), (tuple(x_bat), tuple(y_bat)))
    if jnp.dtype(dtype) == jnp.float32:
        return lax.dot_general(x.astype(dtype), y.astype(dtype), dims, preferred_element_type=jnp.float32)
    return _mixed_dot(x, y, dims, jnp.dtype(dtype), jnp.dtype(x.dtype), jnp.dtype(y.dtype))


def mixed_matmul(x: Array, y: Array, dtype) -> Array:
    """``x @ y`` over leading batch axes (both of the same rank), as :func:`mixed_dot`."""
    batch = tuple(range(x.ndim - 2))
    return mixed_dot(x, y, (((x.ndim - 1,), (y.ndim - 2,)), (batch, batch)), dtype)


@cache
def _linear_dot(dtype):
    """nnx.Linear's ``dot_general`` for a compute dtype below float32 (one object per dtype, so two models built
    alike have equal graph definitions)."""
    def dot_general(x, kernel, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
        if precision is not None or out_sharding is not None:
            raise NotImplementedError("mixed_dot takes neither precision nor out_sharding")
        return mixed_dot(x, kernel, dimension_numbers, dtype)
    return dot_general


def _as_given(args, /, *, dtype=None, inexact=True):
    return args  # the inputs reach mixed_dot uncast: it casts them itself; the bias is added in float32


def _Linear(n_in: int, n_out: int, *, dtype=jnp.float32, **kw) -> nnx.Linear:
    if jnp.dtype(dtype) != jnp.float32:
        kw.update(dot_general=_linear_dot(jnp.dtype(dtype)), promote_dtype=_as_given)
    return nnx.Linear(n_in, n_out, dtype=dtype, preferred_element_type=jnp.float32, **kw)


_Conv = partial(nnx.Conv, preferred_element_type=jnp.float32)  # 3% of the FLOPs: its backward stays float32


class _LayerNorm(nnx.LayerNorm):
    """``nnx.LayerNorm`` over the last axis with torch's epsilon and two-pass variance, the same state and output
    (bit for bit), through :func:`_layer_norm`'s derivative rule."""

    def __init__(self, n_state: int, *, rngs: nnx.Rngs):
        super().__init__(n_state, epsilon=1e-5, use_fast_variance=False, rngs=rngs)

    def __call__(self, x):
        x, scale, bias = self.promote_dtype((x, self.scale[...], self.bias[...]), dtype=self.dtype)
        return _layer_norm(x, scale, bias, self.epsilon)


def _normalized(x, eps):
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    return centred, lax.rsqrt(jnp.square(centred).mean(-1, keepdims=True) + eps)


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _layer_norm(x, scale, bias, eps):
    centred, rstd = _normalized(x, eps)
    return centred * (rstd * scale) + bias  # nnx.LayerNorm's order of operations


@_layer_norm.defjvp
def _layer_norm_jvp(eps, primals, tangents):
    # Written in the normalised input and its inverse deviation: reverse mode keeps that one full-size array
    # (autodiff of the forward kept three: the centred input twice and the broadcast scale).
    (x, scale, bias), (dx, dscale, dbias) = primals, tangents
    centred, rstd = _normalized(x, eps)
    xhat = centred * rstd
    dxhat = rstd * (dx - dx.mean(-1, keepdims=True) - xhat * (dx * xhat).mean(-1, keepdims=True))
    return _layer_norm(x, scale, bias, eps), dxhat * scale + xhat * dscale + dbias


class Dropout(nnx.Dropout):
    """``nnx.Dropout`` (same state, RNG stream and modes) with its random bits from :func:`threefry_bits`.

    ``jax.random`` lowers Threefry on CPU as a rolled loop over its rounds, each round a pass over memory:
    6M bits take ~70 ms on this project's 2-core CPU, more than the matmuls they mask. Here every element
    hashes its own index with the call's key in one fused elementwise kernel (~17x faster, measured). The masks
    depend on the key and the element's position only, so they are the same on any device mesh."""

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
        deterministic = self.deterministic if deterministic is None else deterministic
        if (self.rate == 0.0 or deterministic or self.rate == 1.0 or self.broadcast_dims or rngs is not None
                or self.rngs is None):  # nnx's own path (and its error when there is no RNG stream)
            return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
        threshold = min(round(self.rate * 2.0**32), 2**32 - 1)  # keep when bits >= threshold
        keep = threefry_bits(self.rngs(), inputs.shape) >= np.uint32(threshold)
        return jnp.where(keep, inputs * jnp.asarray(1.0 / (1.0 - self.rate), inputs.dtype), jnp.zeros_like(inputs))


def threefry_bits(key: Array, shape: tuple[int, ...]) -> Array:
    """Random uint32 of ``shape``: the first word of Threefry-2x32 (20 rounds, as ``jax.random``) of each
    element's flat index, keyed by ``key``'s two data words (a threefry key's own; other key types are first
    hashed to two words), written out unrolled so XLA fuses it into its consumer."""
    n = math.prod(shape)
    if n >= 2**32:
        raise ValueError(f"threefry_bits counts elements in uint32; shape {shape} has {n}")
    data = jax.random.key_data(key).reshape(-1)
    k0, k1 = data if data.shape == (2,) else jax.random.bits(key, (2,), jnp.uint32)
    k2 = k0 ^ k1 ^ np.uint32(0x1BD11BDA)
    ks = (k0, k1, k2)
    x0 = lax.iota(jnp.uint32, n).reshape(shape) + k0
    x1 = jnp.broadcast_to(k1, shape)
    for i in range(5):
        for r in ((13, 15, 26, 6), (17, 29, 16, 24))[i % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0


class MultiHeadAttention(nnx.Module):
    def __init__(self, n_state: int, n_head: int, attn_dropout: float = 0.0, *, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.n_head = n_head
        self.query = _Linear(n_state, n_state, dtype=dtype, rngs=rngs)
        self.key = _Linear(n_state, n_state, use_bias=False, dtype=dtype, rngs=rngs)
        self.value = _Linear(n_state, n_state, dtype=dtype, rngs=rngs)
        self.out = _Linear(n_state, n_state, dtype=dtype, rngs=rngs)
        self.attn_dropout = Dropout(attn_dropout, rngs=rngs)

    def __call__(self, x, xa=None, mask=None, kv_cache=None, offset=0, return_qk=False):
        """Self-attention when ``xa`` is None, else cross-attention to ``xa``.

        ``kv_cache`` is this layer's ``(k, v)``: for self-attention, buffers the new keys/values are written into
        at ``offset``; for cross-attention, the keys/values of ``xa`` from :meth:`audio_kv` (then ``xa`` is not
        read). Returns ``(out, kv_cache)``, and with ``return_qk`` also :meth:`attention_logits`.
        """
        q = self.query(x)
        if xa is None:
            k, v = self._heads(self.key(x), self.value(x))
            if kv_cache is not None:  # the slots are kept in the attention's layout
                k, v = kv_cache = _write(kv_cache[0], k, offset, axis=3), _write(kv_cache[1], v, offset, axis=2)
        elif kv_cache is None:
            k, v = self.audio_kv(xa)
        else:
            k, v = kv_cache
        out = self.out(self.qkv_attention(q, k, v, mask))
        if return_qk:
            return out, kv_cache, self.attention_logits(q, k, mask)
        return out, kv_cache

    def _heads(self, k, v):
        """Keys (batch, n_head, d_head, n) scaled, values (batch, n_head, n, d_head): the layout the attention
        product reads directly."""
        n_batch, n, n_state = k.shape
        scale = (n_state // self.n_head) ** -0.25
        k = k.reshape(n_batch, n, self.n_head, -1).transpose(0, 2, 3, 1) * scale
        return k, v.reshape(n_batch, n, self.n_head, -1).transpose(0, 2, 1, 3)

    def audio_kv(self, xa):
        """Cross-attention keys/values of the audio, computed once per audio and arranged once: re-arranging the
        1500-frame keys at every decoding step would cost more than attending to them."""
        return self._heads(self.key(xa), self.value(xa))

    def qkv_attention(self, q, k, v, mask=None):
        """``q`` (rows, n, n_state); ``k``, ``v`` as :meth:`_heads` arranges them."""
        n_rows, n_query, n_state = q.shape
        # Rows sharing one key/value row (the beams of one audio in cross-attention) are folded into its query
        # axis, so the audio side is never copied per beam.
        n_batch = k.shape[0]
        scale = (n_state // self.n_head) ** -0.25
        q = q.reshape(n_batch, -1, self.n_head, n_state // self.n_head).transpose(0, 2, 1, 3) * scale
        # (dropout draws random bits, which a lax.map body cannot do with nnx's RNG streams)
        inference = self.attn_dropout.deterministic or self.attn_dropout.rate == 0
        chunk = _query_chunk(q.shape[2]) if mask is None and inference else 0
        if inference and fused_attention():  # one fused kernel (cuDNN flash attention on GPU); no dropout in it
            out = self._fused(q, k, v, mask)
        elif chunk:  # long self-attention (the encoder's 1500 frames): one row and head at a time, queries in chunks
            def head(qkv):
                qh, kh, vh = qkv  # (n, d_head) queries of one row and head, its keys (d_head, n), values (n, d_head)
                parts = qh.reshape(-1, chunk, qh.shape[-1])
                return lax.map(lambda qc: self._attend(qc, kh, vh, None), parts).reshape(qh.shape)

            flat = lambda t: t.reshape((-1,) + t.shape[2:])  # noqa: E731  (batch * n_head, ...)
            out = lax.map(head, (flat(q), flat(k), flat(v))).reshape(q.shape)
        else:
            out = self._attend(q, k, v, mask)
        return out.transpose(0, 2, 1, 3).reshape(n_rows, n_query, n_state)

    def attention_logits(self, q, k, mask=None):
        """The logits before the softmax, (batch, n_head, n_query, n_key) in float32, as openai-whisper's
        ``qkv_attention`` returns them: word timestamps read the alignment heads' cross-attention from them."""
        n_batch, n_query, n_state = q.shape
        scale = (n_state // self.n_head) ** -0.25
        q = q.reshape(n_batch, n_query, self.n_head, -1).transpose(0, 2, 1, 3) * scale
        qk = mixed_matmul(q, k, self.query.dtype)
        return qk if mask is None else qk + mask

    def _fused(self, q, k, v, mask):
        """:meth:`_attend` (without dropout) as ``jax.nn.dot_product_attention`` in its (batch, n, head, d) layout;
        ``q`` and ``k`` are already scaled."""
        dtype = self.query.dtype
        bias = None if mask is None else (mask if mask.ndim == 4 else mask[None, None]).astype(dtype)
        out = jax.nn.dot_product_attention(q.transpose(0, 2, 1, 3).astype(dtype), k.transpose(0, 3, 1, 2).astype(dtype),
                                           v.transpose(0, 2, 1, 3).astype(dtype), bias=bias, scale=1.0)
        return out.transpose(0, 2, 1, 3).astype(jnp.float32)

    def _attend(self, q, k, v, mask):
        dtype = self.query.dtype
        qk = mixed_matmul(q, k, dtype)
        if mask is not None:
            qk = qk + mask
        w = self.attn_dropout(jax.nn.softmax(qk, axis=-1).astype(dtype))
        return mixed_matmul(w, v, dtype)


FUSED_ATTENTION: bool | None = None  # None: on accelerators; True / False forces it (tests)


def fused_attention() -> bool:
    """Whether attention without dropout runs as ``jax.nn.dot_product_attention``: on GPU/TPU, where it lowers to a
    fused kernel (cuDNN's flash attention for bf16/fp16 on NVIDIA); on CPU it would be the same XLA ops as
    :meth:`MultiHeadAttention._attend` in another layout, and the row/chunk loop keeps scores in cache."""
    return jax.default_backend() != "cpu" if FUSED_ATTENTION is None else FUSED_ATTENTION


def _query_chunk(n: int) -> int:
    """Query chunk for attention over ``n`` positions, or 0 for none. On CPU, XLA's softmax over a
    (batch, heads, 1500, 1500) score matrix runs from memory; one row, one head and ~500 queries at a time keep
    it in cache (tiny.en's 1500-frame attention layer: all heads of 250 queries at a time 40-44 ms, one head of
    500 at a time 29-37 ms; 375 or 1500 queries are slower). Only for long sequences and when a divisor of ``n``
    between 256 and 512 exists."""
    if n <= 512:
        return 0
    return next((c for c in range(512, 255, -1) if n % c == 0), 0)


def _write(buf: Array, new: Array, offset: Array, axis: int) -> Array:
    """``new`` into ``buf`` at ``offset`` along the slot ``axis``: one offset for all rows, or one per row."""
    new = new.astype(buf.dtype)
    if jnp.ndim(offset) == 0:
        return lax.dynamic_update_slice_in_dim(buf, new, offset, axis)
    if new.shape[axis] == 1:
        # One token per row (a decoding step): a select over the slots. A vmapped dynamic_update_slice becomes a
        # scatter, which XLA's CPU backend does not update in place inside the decoding loop: it copied every
        # layer's slots several times a step (1.6 ms of a 9.6 ms tiny.en step).
        slot = lax.broadcasted_iota(jnp.int32, buf.shape, axis) == offset.reshape((-1,) + (1,) * (buf.ndim - 1))
        return jnp.where(slot, new, buf)
    return jax.vmap(lambda b, x, o: lax.dynamic_update_slice_in_dim(b, x, o, axis - 1))(buf, new, offset)


class ResidualAttentionBlock(nnx.Module):
    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False, dropout: float = 0.0,
                 attn_dropout: float = 0.0, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.attn = MultiHeadAttention(n_state, n_head, attn_dropout, dtype=dtype, rngs=rngs)
        self.attn_ln = _LayerNorm(n_state, rngs=rngs)
        self.cross_attn = (
            MultiHeadAttention(n_state, n_head, attn_dropout, dtype=dtype, rngs=rngs) if cross_attention else None
        )
        self.cross_attn_ln = _LayerNorm(n_state, rngs=rngs) if cross_attention else None
        n_mlp = n_state * 4
        self.mlp = nnx.Sequential(_Linear(n_state, n_mlp, dtype=dtype, rngs=rngs), _gelu,
                                  _Linear(n_mlp, n_state, dtype=dtype, rngs=rngs))
        self.mlp_ln = _LayerNorm(n_state, rngs=rngs)
        self.dropout = Dropout(dropout, rngs=rngs)

    def __call__(self, x, xa=None, mask=None, kv_cache=None, offset=0, return_qk=False):
        """``kv_cache`` is this layer's ``(k, v, xk, xv)`` or None; returns ``(x, kv_cache)``, with ``return_qk``
        ``(x, kv_cache, qk)``: the cross-attention logits."""
        self_kv, cross_kv = (None, None) if kv_cache is None else (kv_cache[:2], kv_cache[2:])
        h, self_kv = self.attn(self.attn_ln(x), mask=mask, kv_cache=self_kv, offset=offset)
        x = x + self.dropout(h)
        qk = None
        if self.cross_attn is not None:
            out = self.cross_attn(self.cross_attn_ln(x), xa, kv_cache=cross_kv, return_qk=return_qk)
            h, cross_kv, qk = out if return_qk else (*out, None)
            x = x + self.dropout(h)
        x = x + self.dropout(self.mlp(self.mlp_ln(x)))
        kv_cache = None if kv_cache is None else (*self_kv, *cross_kv)
        return (x, kv_cache, qk) if return_qk else (x, kv_cache)


def stack_blocks(blocks: nnx.List):
    """The state of ``blocks`` (identical structure) stacked along a new leading axis, as :func:`_scan_blocks`
    scans it."""
    return jax.tree.map(lambda *a: jnp.stack(a), *(nnx.state(b) for b in blocks))


def _scan_blocks(blocks: nnx.List, x: Array, stacked=None, **kw) -> Array:
    """``x`` through ``blocks`` (identical structure, no cache) as one ``lax.scan`` over their stacked state.

    XLA compiles one block instead of every layer (compile time), and the loop body is a fusion boundary: unrolled,
    XLA's CPU fusion re-derives the residual stream's gradient through all later layers inside each layer's weight
    gradient. Parameters stay one module per layer (checkpoint names unchanged); each layer's dropout stream is
    advanced as in the unrolled loop, so both give the same function and the same random masks. ``stacked``:
    :func:`stack_blocks` of ``blocks`` made beforehand (inference with fixed weights), else stacked here, a copy
    of every block's weights at each call."""
    graphdef, _ = nnx.split(blocks[0])
    if stacked is None:
        stacked = stack_blocks(blocks)

    def body(x, state):
        block = nnx.merge(graphdef, state)
        x, _ = block(x, **kw)
        return x, nnx.state(block)

    x, stacked = lax.scan(body, x, stacked)
    for i, b in enumerate(blocks):
        nnx.update(b, jax.tree.map(lambda a, i=i: a[i], stacked))  # dropout counters
    return x


class AudioEncoder(nnx.Module):
    scan = True  # the blocks as one lax.scan (_scan_blocks); False unrolls them
    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int, dropout: float = 0.0,
                 attn_dropout: float = 0.0, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv1 = _Conv(n_mels, n_state, kernel_size=3, padding=((1, 1),), dtype=dtype, rngs=rngs)
        self.conv2 = _Conv(n_state, n_state, kernel_size=3, strides=2, padding=((1, 1),), dtype=dtype, rngs=rngs)
        self.positional_embedding = Buffer(sinusoids(n_ctx, n_state))
        self.blocks = nnx.List(
            [ResidualAttentionBlock(n_state, n_head, False, dropout, attn_dropout, dtype=dtype, rngs=rngs)
             for _ in range(n_layer)]
        )
        self.ln_post = _LayerNorm(n_state, rngs=rngs)

    def __call__(self, x: Array, stacked=None) -> Array:
        """x: (batch, n_mels, n_frames) log-mel, n_frames even and at most 2 * n_ctx. ``stacked``: the blocks'
        state as :func:`stack_blocks` makes it, for callers that encode many times with the same weights."""
        n_mels, n_ctx = self.conv1.in_features, self.positional_embedding.shape[0]
        if x.ndim != 3 or x.shape[1] != n_mels or x.shape[2] % 2 or not 0 < x.shape[2] <= 2 * n_ctx:
            raise ValueError(
                f"mel must be (batch, {n_mels}, n_frames) with n_frames even and <= {2 * n_ctx}, "
                f"got {tuple(x.shape)}"
            )
        x = x.transpose(0, 2, 1)  # flax convolutions are channels-last
        x = _gelu(self.conv1(x))
        x = _gelu(self.conv2(x))
        x = x + self.positional_embedding[: x.shape[1]].astype(x.dtype)
        if self.scan or stacked is not None:
            x = _scan_blocks(self.blocks, x, stacked)
        else:
            for block in self.blocks:
                x, _ = block(x)
        return self.ln_post(x)


class TextDecoder(nnx.Module):
    scan = True  # without a cache, the blocks as one lax.scan (_scan_blocks); False unrolls them
    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int, dropout: float = 0.0,
                 attn_dropout: float = 0.0, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.token_embedding = nnx.Embed(n_vocab, n_state, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.positional_embedding = nnx.Param(nnx.initializers.normal(0.01)(rngs.params(), (n_ctx, n_state)))
        self.blocks = nnx.List(
            [ResidualAttentionBlock(n_state, n_head, True, dropout, attn_dropout, dtype=dtype, rngs=rngs)
             for _ in range(n_layer)]
        )
        self.ln = _LayerNorm(n_state, rngs=rngs)

    def __call__(self, x: Array, xa: Array, kv_cache: KVCache | None = None, select: Array | None = None,
                 project: bool = True, unembed: Array | None = None, return_qk: bool = False):
        """x: (batch, n_tokens) token ids; xa: (batch, n_audio, n_state) encoder output.

        Without a cache returns logits (batch, n_tokens, n_vocab). With one, the tokens are positions
        ``kv_cache.offset ...`` (per row if the offset is (batch,)) and the call returns ``(logits, kv_cache)``
        with the offset advanced by n_tokens. ``select`` (batch, k) int: return the logits of those token
        indices only, (batch, k, n_vocab); the vocabulary projection dominates a long prompt's cost.
        ``project=False`` (without a cache) returns the final LayerNorm's output in the compute dtype instead of
        the logits, for a loss that projects onto the tied embedding itself (``train.projected_cross_entropy``).
        ``unembed``: the projection's (n_state, n_vocab) matrix as :meth:`unembedding` makes it, for callers that
        project many times with the same weights (a decoding loop). ``return_qk`` (without a cache): return
        ``(logits, qks)``, ``qks`` every layer's cross-attention logits (batch, n_head, n_tokens, n_audio).
        """
        n_ctx = self.positional_embedding.shape[0]
        offset = 0 if kv_cache is None else kv_cache.offset
        if not project and (kv_cache is not None or select is not None):
            raise ValueError("project=False is for a forward pass without a cache or select")
        if return_qk and kv_cache is not None:
            raise ValueError("return_qk is for a forward pass without a cache")
        if x.ndim != 2 or x.shape[1] > n_ctx:  # a traced offset is checked by the caller's loop bound
            raise ValueError(f"tokens must be (batch, n) with n <= {n_ctx}, got {tuple(x.shape)}")
        n = x.shape[1]
        if jnp.ndim(offset) == 0:
            pos = lax.dynamic_slice_in_dim(self.positional_embedding[...], offset, n)
        else:
            pos = self.positional_embedding[...][offset[:, None] + jnp.arange(n)]  # (batch, n, n_state)
        x = self.token_embedding(x) + pos
        if kv_cache is None:
            mask = jnp.where(jnp.tril(jnp.ones((n, n), bool)), 0.0, -jnp.inf)
        else:  # query i (absolute position offset + i) sees cache slots j <= offset + i
            slots = jnp.arange(kv_cache.k[0].shape[-1])
            positions = jnp.asarray(offset)[..., None, None] + jnp.arange(n)[:, None]  # (n, 1) or (batch, n, 1)
            mask = jnp.where(slots <= positions, 0.0, -jnp.inf)
            if mask.ndim == 3:
                mask = mask[:, None]  # (batch, 1, n, slots): broadcast over heads
        layers, qks = [], []
        if self.scan and kv_cache is None and not return_qk:
            x = _scan_blocks(self.blocks, x, xa=xa, mask=mask)
        else:
            for i, block in enumerate(self.blocks):
                layer = None if kv_cache is None else (kv_cache.k[i], kv_cache.v[i], kv_cache.xk[i], kv_cache.xv[i])
                x, layer, *qk = block(x, xa, mask=mask, kv_cache=layer, offset=offset, return_qk=return_qk)
                layers.append(layer)
                qks += qk
        if select is not None:
            x = jnp.take_along_axis(x, select[..., None], axis=1)
        x = self.ln(x).astype(self.dtype)
        if not project:
            return x
        if unembed is None:
            unembed = self.token_embedding.embedding[...].astype(self.dtype).T
        logits = jnp.matmul(x, unembed, preferred_element_type=jnp.float32)
        if return_qk:
            return logits, qks
        if kv_cache is None:
            return logits
        k, v, xk, xv = (list(t) for t in zip(*layers, strict=True))
        return logits, KVCache(k, v, xk, xv, offset + n)

    def unembedding(self) -> Array:
        """The vocabulary projection ``embedding.T`` (n_state, n_vocab) in the compute dtype. On CPU it is copied
        into that layout once: a decoding step's (1 x n_state) @ embedding.T otherwise re-arranges the whole
        embedding inside the matmul (tiny.en: 3.2 ms a step for 80 MB, ~2.9 ms pre-transposed)."""
        embedding = self.token_embedding.embedding[...].astype(self.dtype)
        return lax.platform_dependent(embedding, cpu=lambda e: lax.optimization_barrier(e.T), default=lambda e: e.T)

    def init_cache(self, xa: Array, max_len: int | None = None) -> KVCache:
        """Empty self-attention slots and the cross-attention keys/values of ``xa``, computed once."""
        max_len = max_len or self.positional_embedding.shape[0]
        n_batch, n_state, n_head = xa.shape[0], xa.shape[2], self.blocks[0].attn.n_head
        shape = (n_batch, n_head, n_state // n_head, max_len)  # keys; values swap the last two axes
        xk, xv = zip(*(b.cross_attn.audio_kv(xa) for b in self.blocks), strict=True)
        return KVCache(k=[jnp.zeros(shape, self.dtype) for _ in self.blocks],
                       v=[jnp.zeros((*shape[:2], max_len, shape[2]), self.dtype) for _ in self.blocks],
                       xk=list(xk), xv=list(xv), offset=jnp.zeros((), jnp.int32))


class Whisper(nnx.Module):
    def __init__(self, cfg: WhisperConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = AudioEncoder(
            cfg.n_mels, cfg.n_audio_ctx, cfg.n_audio_state, cfg.n_audio_head, cfg.n_audio_layer,
            cfg.dropout, cfg.attn_dropout, dtype=dtype, rngs=rngs,
        )
        self.decoder = TextDecoder(
            cfg.n_vocab, cfg.n_text_ctx, cfg.n_text_state, cfg.n_text_head, cfg.n_text_layer,
            cfg.dropout, cfg.attn_dropout, dtype=dtype, rngs=rngs,
        )
        self.set_alignment_heads(alignment_heads(cfg))

    def set_alignment_heads(self, heads) -> None:
        """The decoder's cross-attention heads that word timestamps read, ``[layer, head]`` pairs (a checkpoint's,
        or openai-whisper's default: every head of the last half of the layers)."""
        self.alignment_heads = checked_alignment_heads(heads, self.cfg)

    def embed_audio(self, mel: Array, stacked=None) -> Array:
        return self.encoder(mel, stacked)

    def logits(self, tokens: Array, audio_features: Array, kv_cache: KVCache | None = None,
               select: Array | None = None, unembed: Array | None = None):
        return self.decoder(tokens, audio_features, kv_cache, select, unembed=unembed)

    def __call__(self, mel: Array, tokens: Array) -> Array:
        return self.decoder(tokens, self.encoder(mel))

    def init_cache(self, audio_features: Array, max_len: int | None = None) -> KVCache:
        return self.decoder.init_cache(audio_features, max_len)
