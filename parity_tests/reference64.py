"""Whisper in float64 numpy: the judge where float32 implementations disagree.

Two float32 implementations of one model can pick different tokens where the top two logits are within their
rounding error of each other. This module computes the same function in float64 (about 1e-16 relative rounding, so
its choice is the exact model's up to margins far below any float32 error), straight from the openai-named state
dict, with no framework: the log-mel from samples, the encoder (every block's output kept), and teacher-forced
decoder logits. Slow (no cache; the decoder recomputes the whole prefix) and meant for a handful of windows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy.special import erf

N_FFT, HOP_LENGTH, N_SAMPLES = 400, 160, 480000


def _mel_filters(n_mels: int) -> np.ndarray:
    import importlib.util

    assets = Path(importlib.util.find_spec("whisper").submodule_search_locations[0]) / "assets"
    with np.load(assets / "mel_filters.npz") as f:
        return f[f"mel_{n_mels}"].astype(np.float64)


def log_mel64(audio: np.ndarray, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """openai-whisper's ``log_mel_spectrogram`` in float64: periodic Hann, centred reflect-padded STFT, the last
    frame dropped, |X|^2, Slaney mel filters, log10(max(x, 1e-10)), max(x, max - 8), (x + 4) / 4."""
    x = np.asarray(audio, np.float64)
    if padding:
        x = np.concatenate([x, np.zeros(padding)])
    x = np.pad(x, N_FFT // 2, mode="reflect")
    n_frames = 1 + (x.size - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.as_strided(x, (n_frames, N_FFT), (x.strides[0] * HOP_LENGTH, x.strides[0]))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # (frames, 201)
    mel = _mel_filters(n_mels) @ power[:-1].T  # (n_mels, frames - 1)
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    return (log + 4.0) / 4.0


def _layer_norm(x, w, b):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * w + b


def _gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _conv1d(x, w, b, stride):
    """x (frames, c_in), w (c_out, c_in, 3), padding 1 -> (frames', c_out)."""
    xp = np.pad(x, ((1, 1), (0, 0)))
    n_out = (xp.shape[0] - 3) // stride + 1
    cols = np.stack([xp[k : k + stride * (n_out - 1) + 1 : stride] for k in range(3)], axis=-1)  # (n_out, c_in, 3)
    return np.einsum("tck,ock->to", cols, w) + b


class Whisper64:
    """The model of an openai-named state dict (torch tensors or arrays) in float64."""

    def __init__(self, state: Mapping, n_audio_head: int, n_text_head: int):
        self.w = {k: np.asarray(v.detach().double().numpy() if hasattr(v, "detach") else v, np.float64)
                  for k, v in state.items()}
        self.n_audio_head, self.n_text_head = n_audio_head, n_text_head
        self.n_audio_layer = 1 + max(int(k.split(".")[2]) for k in self.w if k.startswith("encoder.blocks."))
        self.n_text_layer = 1 + max(int(k.split(".")[2]) for k in self.w if k.startswith("decoder.blocks."))

    def _attn(self, p, x, xa, n_head, causal):
        w = self.w
        q = x @ w[f"{p}.query.weight"].T + w[f"{p}.query.bias"]
        k = xa @ w[f"{p}.key.weight"].T
        v = xa @ w[f"{p}.value.weight"].T + w[f"{p}.value.bias"]
        d = q.shape[-1] // n_head
        q, k, v = (t.reshape(t.shape[0], n_head, d).transpose(1, 0, 2) for t in (q, k, v))
        qk = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        if causal:
            qk = qk + np.triu(np.full(qk.shape[-2:], -np.inf), 1)
        qk = np.exp(qk - qk.max(-1, keepdims=True))
        out = (qk / qk.sum(-1, keepdims=True)) @ v
        out = out.transpose(1, 0, 2).reshape(x.shape[0], -1)
        return out @ w[f"{p}.out.weight"].T + w[f"{p}.out.bias"]

    def _block(self, p, x, xa, n_head, causal):
        w = self.w
        h = _layer_norm(x, w[f"{p}.attn_ln.weight"], w[f"{p}.attn_ln.bias"])
        x = x + self._attn(f"{p}.attn", h, h, n_head, causal)
        if xa is not None:
            h = _layer_norm(x, w[f"{p}.cross_attn_ln.weight"], w[f"{p}.cross_attn_ln.bias"])
            x = x + self._attn(f"{p}.cross_attn", h, xa, n_head, False)
        h = _layer_norm(x, w[f"{p}.mlp_ln.weight"], w[f"{p}.mlp_ln.bias"])
        h = _gelu(h @ w[f"{p}.mlp.0.weight"].T + w[f"{p}.mlp.0.bias"])
        return x + h @ w[f"{p}.mlp.2.weight"].T + w[f"{p}.mlp.2.bias"]

    def encode(self, mel: np.ndarray) -> list[np.ndarray]:
        """mel (n_mels, frames) -> the residual stream after the stem and after every block, then ``ln_post``'s
        output (the encoder's): ``n_audio_layer + 2`` arrays of (frames / 2, n_state)."""
        w = self.w
        x = _gelu(_conv1d(np.asarray(mel, np.float64).T, w["encoder.conv1.weight"], w["encoder.conv1.bias"], 1))
        x = _gelu(_conv1d(x, w["encoder.conv2.weight"], w["encoder.conv2.bias"], 2))
        x = x + w["encoder.positional_embedding"][: x.shape[0]]
        out = [x]
        for i in range(self.n_audio_layer):
            x = self._block(f"encoder.blocks.{i}", x, None, self.n_audio_head, False)
            out.append(x)
        out.append(_layer_norm(x, w["encoder.ln_post.weight"], w["encoder.ln_post.bias"]))
        return out

    def logits(self, tokens, xa: np.ndarray) -> np.ndarray:
        """Teacher-forced logits (len(tokens), n_vocab) of one token sequence on one audio's encoder output."""
        w = self.w
        tokens = np.asarray(tokens)
        x = w["decoder.token_embedding.weight"][tokens] + w["decoder.positional_embedding"][: tokens.size]
        for i in range(self.n_text_layer):
            x = self._block(f"decoder.blocks.{i}", x, xa, self.n_text_head, True)
        x = _layer_norm(x, w["decoder.ln.weight"], w["decoder.ln.bias"])
        return x @ w["decoder.token_embedding.weight"].T


def window_tokens(result: Mapping) -> dict[int, list[int]]:
    """A ``transcribe`` result's sampled tokens per window (``seek``), concatenated from its segments."""
    out: dict[int, list[int]] = {}
    for s in result["segments"]:
        out.setdefault(int(s["seek"]), []).extend(int(t) for t in s["tokens"])
    return out


def first_divergence(ours: Mapping, theirs: Mapping) -> tuple[int, int, list[int], int, int] | None:
    """Where two greedy ``transcribe`` results of one file part: ``(seek, index, common prefix, our token, their
    token)`` in the first window whose tokens differ, or None if every window's tokens agree (a token missing
    at the end counts as -1)."""
    a, b = window_tokens(ours), window_tokens(theirs)
    for seek in sorted(set(a) | set(b)):
        x, y = a.get(seek, []), b.get(seek, [])
        if x == y:
            continue
        if seek not in a or seek not in b:
            return seek, 0, [], x[0] if x else -1, y[0] if y else -1
        j = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
        return seek, j, x[:j], x[j] if j < len(x) else -1, y[j] if j < len(y) else -1
    return None


def judge(model: Whisper64, audio: np.ndarray, ours: Mapping, theirs: Mapping, sot_sequence) -> dict | None:
    """The float64 model's verdict where two greedy transcriptions of ``audio`` part: the logits of both tokens
    after the common prefix, teacher-forced on the float64 log-mel of that window as openai-whisper's
    ``transcribe`` cuts it (the log-mel of the audio plus 30 s of zeros; from ``seek`` up to 3000 frames of the
    audio's own, zero-padded to 3000). None if the tokens never differ."""
    where = first_divergence(ours, theirs)
    if where is None:
        return None
    seek, index, prefix, a, b = where
    full = log_mel64(audio, padding=N_SAMPLES)
    content = full.shape[1] - 3000
    mel = full[:, seek:seek + min(3000, content - seek)]
    mel = np.pad(mel, ((0, 0), (0, 3000 - mel.shape[1])))
    logits = model.logits([*sot_sequence, *prefix], model.encode(mel)[-1])[-1]
    top2 = np.sort(logits)[-2:]
    return {"seek": seek, "index": index, "ours": a, "theirs": b,
            "margin": float(logits[a] - logits[b]) if min(a, b) >= 0 else None,
            "top_gap": float(top2[1] - top2[0]), "argmax": int(np.argmax(logits))}
