"""The canonical PyTorch Whisper (openai-whisper's architecture), with training dropout and a fixed-size cache.

State-dict keys are openai-whisper's, so ``whisper.model.Whisper(dims)`` and this model load each other's
weights with ``strict=True``. ``jax_whisper/model.py`` mirrors this file name for name and in the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jax_whisper.config import WhisperConfig, alignment_heads, checked_alignment_heads


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> Tensor:
    """Fixed encoder positions: [sin | cos] halves, timescales log-spaced from 1 to max_timescale.

    Computed in float64 and rounded once: in float32 the phase ``t * inv_timescale`` at t ~ 1500 carries
    ~1e-4 of error from ``exp``'s last bit, which would differ between libraries.
    """
    if channels % 2:
        raise ValueError(f"sinusoids need an even channel count, got {channels}")
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2, dtype=torch.float64))
    scaled_time = torch.arange(length, dtype=torch.float64)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1).float()


@dataclass
class KVCache:
    """Decoder key/value cache of fixed size: self-attention slots for every text position, cross-attention
    keys/values computed once per audio. ``offset`` counts the tokens already written."""

    k: list[Tensor]  # per layer (batch, n_head, d_head, max_len), scaled (MultiHeadAttention._heads)
    v: list[Tensor]  # per layer (batch, n_head, max_len, d_head)
    xk: list[Tensor]  # per layer (batch, n_head, d_head, n_audio), scaled (MultiHeadAttention.audio_kv)
    xv: list[Tensor]  # per layer (batch, n_head, n_audio, d_head)
    offset: int = 0

    def reorder(self, index: Tensor) -> KVCache:
        """Select batch rows (beam search)."""
        take = lambda ts: [t[index] for t in ts]  # noqa: E731
        return KVCache(take(self.k), take(self.v), take(self.xk), take(self.xv), self.offset)


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int, attn_dropout: float = 0.0):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)
        self.attn_dropout = nn.Dropout(attn_dropout)

    def forward(self, x, xa=None, mask=None, kv_cache=None, offset=0, return_qk=False):
        """Self-attention when ``xa`` is None, else cross-attention to ``xa``.

        ``kv_cache`` is this layer's ``(k, v)``: for self-attention, buffers the new keys/values are written into
        at ``offset``; for cross-attention, the keys/values of ``xa`` from :meth:`audio_kv` (then ``xa`` is not
        read). Returns ``(out, kv_cache)``, and with ``return_qk`` also :meth:`attention_logits`.
        """
        q = self.query(x)
        if xa is None:
            k, v = self._heads(self.key(x), self.value(x))
            if kv_cache is not None:  # the slots are kept in the attention's layout
                k_buf, v_buf = kv_cache
                n_ctx = x.shape[1]
                if offset + n_ctx > k_buf.shape[3]:
                    raise ValueError(f"kv cache holds {k_buf.shape[3]} positions, asked for {offset + n_ctx}")
                k_buf[..., offset : offset + n_ctx] = k.to(k_buf.dtype)
                v_buf[:, :, offset : offset + n_ctx] = v.to(v_buf.dtype)
                k, v = kv_cache = k_buf, v_buf
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
        k = k.view(n_batch, n, self.n_head, -1).permute(0, 2, 3, 1) * scale
        return k, v.view(n_batch, n, self.n_head, -1).permute(0, 2, 1, 3)

    def audio_kv(self, xa):
        """Cross-attention keys/values of the audio, computed once per audio and arranged once."""
        return self._heads(self.key(xa), self.value(xa))

    def qkv_attention(self, q, k, v, mask=None):
        """``q`` (batch, n, n_state); ``k``, ``v`` as :meth:`_heads` arranges them. (The Flax model also folds
        beams into the query axis and chunks long queries; neither changes the function.)"""
        n_batch, n_ctx, n_state = q.shape
        scale = (n_state // self.n_head) ** -0.25
        q = q.view(n_batch, n_ctx, self.n_head, -1).permute(0, 2, 1, 3) * scale
        return self._attend(q, k, v, mask).permute(0, 2, 1, 3).flatten(start_dim=2)

    def attention_logits(self, q, k, mask=None):
        """The logits before the softmax, (batch, n_head, n_query, n_key) in float32, as openai-whisper's
        ``qkv_attention`` returns them: word timestamps read the alignment heads' cross-attention from them."""
        n_batch, n_query, n_state = q.shape
        scale = (n_state // self.n_head) ** -0.25
        q = q.view(n_batch, n_query, self.n_head, -1).permute(0, 2, 1, 3) * scale
        qk = (q @ k).float()
        return qk if mask is None else qk + mask

    def _attend(self, q, k, v, mask):
        qk = (q @ k).float()
        if mask is not None:
            qk = qk + mask
        w = self.attn_dropout(F.softmax(qk, dim=-1).to(q.dtype))
        return w @ v.to(w.dtype)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False, dropout: float = 0.0,
                 attn_dropout: float = 0.0):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head, attn_dropout)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head, attn_dropout) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        n_mlp = n_state * 4
        self.mlp = nn.Sequential(nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, xa=None, mask=None, kv_cache=None, offset=0, return_qk=False):
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


class AudioEncoder(nn.Module):
    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int, dropout: float = 0.0,
                 attn_dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(n_ctx, n_state))
        self.blocks = nn.ModuleList(
            [ResidualAttentionBlock(n_state, n_head, False, dropout, attn_dropout) for _ in range(n_layer)]
        )
        self.ln_post = nn.LayerNorm(n_state)

    def forward(self, x: Tensor) -> Tensor:
        """x: (batch, n_mels, n_frames) log-mel, n_frames even and at most 2 * n_ctx."""
        n_mels, n_ctx = self.conv1.in_channels, self.positional_embedding.shape[0]
        if x.ndim != 3 or x.shape[1] != n_mels or x.shape[2] % 2 or not 0 < x.shape[2] <= 2 * n_ctx:
            raise ValueError(
                f"mel must be (batch, {n_mels}, n_frames) with n_frames even and <= {2 * n_ctx}, "
                f"got {tuple(x.shape)}"
            )
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = x.permute(0, 2, 1)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        for block in self.blocks:
            x, _ = block(x)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int, dropout: float = 0.0,
                 attn_dropout: float = 0.0):
        super().__init__()
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.positional_embedding = nn.Parameter(torch.empty(n_ctx, n_state))
        self.blocks = nn.ModuleList(
            [ResidualAttentionBlock(n_state, n_head, True, dropout, attn_dropout) for _ in range(n_layer)]
        )
        self.ln = nn.LayerNorm(n_state)
        self.register_buffer("mask", torch.full((n_ctx, n_ctx), -math.inf).triu_(1), persistent=False)

    def forward(self, x: Tensor, xa: Tensor, kv_cache: KVCache | None = None, return_qk: bool = False):
        """x: (batch, n_tokens) token ids; xa: (batch, n_audio, n_state) encoder output.

        Without a cache returns logits (batch, n_tokens, n_vocab). With one, the tokens are positions
        ``kv_cache.offset ...`` and the call returns ``(logits, kv_cache)`` with the offset advanced.
        ``return_qk`` (without a cache): return ``(logits, qks)``, ``qks`` every layer's cross-attention logits
        (batch, n_head, n_tokens, n_audio).
        """
        n_ctx = self.positional_embedding.shape[0]
        offset = 0 if kv_cache is None else kv_cache.offset
        if return_qk and kv_cache is not None:
            raise ValueError("return_qk is for a forward pass without a cache")
        if x.ndim != 2 or offset + x.shape[1] > n_ctx:
            raise ValueError(f"tokens must be (batch, n) with offset + n <= {n_ctx}, got {tuple(x.shape)}, "
                             f"offset {offset}")
        n = x.shape[1]
        x = self.token_embedding(x) + self.positional_embedding[offset : offset + n]
        x = x.to(xa.dtype)
        if kv_cache is None:
            mask = self.mask[:n, :n]
        else:  # query i (absolute position offset + i) sees cache slots j <= offset + i
            slots = torch.arange(kv_cache.k[0].shape[-1], device=x.device)
            positions = offset + torch.arange(n, device=x.device)
            mask = torch.where(slots[None, :] <= positions[:, None], 0.0, -math.inf)
        layers, qks = [], []
        for i, block in enumerate(self.blocks):
            layer = None if kv_cache is None else (kv_cache.k[i], kv_cache.v[i], kv_cache.xk[i], kv_cache.xv[i])
            x, layer, *qk = block(x, xa, mask=mask, kv_cache=layer, offset=offset, return_qk=return_qk)
            layers.append(layer)
            qks += qk
        x = self.ln(x)
        logits = (x @ self.token_embedding.weight.to(x.dtype).T).float()
        if return_qk:
            return logits, qks
        if kv_cache is None:
            return logits
        k, v, xk, xv = (list(t) for t in zip(*layers, strict=True))
        return logits, KVCache(k, v, xk, xv, offset + n)

    def init_cache(self, xa: Tensor, max_len: int | None = None) -> KVCache:
        """Empty self-attention slots and the cross-attention keys/values of ``xa``, computed once."""
        max_len = max_len or self.positional_embedding.shape[0]
        n_batch, n_state, n_head = xa.shape[0], xa.shape[2], self.blocks[0].attn.n_head
        shape = (n_batch, n_head, n_state // n_head, max_len)  # keys; values swap the last two axes
        xk, xv = zip(*(b.cross_attn.audio_kv(xa) for b in self.blocks), strict=True)
        return KVCache(k=[xa.new_zeros(shape) for _ in self.blocks],
                       v=[xa.new_zeros(*shape[:2], max_len, shape[2]) for _ in self.blocks],
                       xk=list(xk), xv=list(xv))


class Whisper(nn.Module):
    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = AudioEncoder(
            cfg.n_mels, cfg.n_audio_ctx, cfg.n_audio_state, cfg.n_audio_head, cfg.n_audio_layer,
            cfg.dropout, cfg.attn_dropout,
        )
        self.decoder = TextDecoder(
            cfg.n_vocab, cfg.n_text_ctx, cfg.n_text_state, cfg.n_text_head, cfg.n_text_layer,
            cfg.dropout, cfg.attn_dropout,
        )
        self.set_alignment_heads(alignment_heads(cfg))
        self.reset_parameters()

    def set_alignment_heads(self, heads) -> None:
        """The decoder's cross-attention heads that word timestamps read, ``[layer, head]`` pairs (a checkpoint's,
        or openai-whisper's default: every head of the last half of the layers)."""
        self.alignment_heads = checked_alignment_heads(heads, self.cfg)

    @torch.no_grad()
    def reset_parameters(self):
        """Fresh weights with the Flax model's initialisers: LeCun truncated normal (flax's default for
        Dense/Conv), zero biases, unit LayerNorm, N(0, 0.02) token and N(0, 0.01) position embeddings."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d)):
                std = 1.0 / math.sqrt(m.weight[0].numel()) / 0.87962566  # corrects the std of N cut at ±2σ
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.decoder.token_embedding.weight, std=0.02)
        nn.init.normal_(self.decoder.positional_embedding, std=0.01)

    def embed_audio(self, mel: Tensor) -> Tensor:
        return self.encoder(mel)

    def logits(self, tokens: Tensor, audio_features: Tensor, kv_cache: KVCache | None = None):
        return self.decoder(tokens, audio_features, kv_cache)

    def forward(self, mel: Tensor, tokens: Tensor) -> Tensor:
        return self.decoder(tokens, self.encoder(mel))

    def init_cache(self, audio_features: Tensor, max_len: int | None = None) -> KVCache:
        return self.decoder.init_cache(audio_features, max_len)

    @property
    def device(self):
        return self.decoder.token_embedding.weight.device
