"""Voice activity detection: Silero VAD v6 (16 kHz) in JAX, its speech timestamps, and speech windows.

The network (the weights of the installed ``silero-vad`` package's 16 kHz model; nothing is downloaded) reads
32 ms frames of 512 samples, each with the last 64 samples of the previous frame in front: a fixed STFT (a 256-tap
convolution, 129 magnitudes), four small convolutions, an LSTM cell carried from frame to frame, and a sigmoid.
Everything but the LSTM is independent per frame, so all frames of a file go through the convolutions as one batch
and only the LSTM is a scan: one jitted call per file instead of Silero's Python loop over frames (616 s of speech
in ~0.4 s on 2 Xeon cores). :func:`speech_timestamps` turns the frame probabilities into speech regions by Silero's
rules (``get_speech_timestamps``); :func:`speech_windows` packs the regions into windows of at most one Whisper
window, which :func:`jax_whisper.chunked.transcribe_chunked` decodes in batches (``vad=``), as
faster-whisper's ``BatchedInferencePipeline`` does.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_whisper.audio import SAMPLE_RATE

FRAME = 512  # samples a probability speaks for (32 ms)
CONTEXT = 64  # samples of the previous frame the network also reads
_BUCKET = 1024  # frames: a file's frame count is padded to a multiple, so few shapes are compiled
MODEL = "silero_vad.jit"  # the package's TorchScript model: the weights its ONNX and JIT models compute with
_NAMES = {"stft.forward_basis_buffer": "stft_conv.weight", "decoder.rnn.weight_ih": "lstm_cell.weight_ih",
          "decoder.rnn.weight_hh": "lstm_cell.weight_hh", "decoder.rnn.bias_ih": "lstm_cell.bias_ih",
          "decoder.rnn.bias_hh": "lstm_cell.bias_hh", "decoder.decoder.2.weight": "final_conv.weight",
          "decoder.decoder.2.bias": "final_conv.bias",
          **{f"encoder.{i}.reparam_conv.{p}": f"conv{i + 1}.{p}" for i in range(4) for p in ("weight", "bias")}}


@cache
def silero_weights() -> dict[str, np.ndarray]:
    """The Silero VAD v6 16 kHz weights of the installed ``silero-vad`` package, read from its TorchScript model
    (its ``silero_vad_16k.safetensors`` holds other weights than the ONNX and JIT models it runs). The package
    is found without importing it: its ``__init__`` sets torch's thread count to 1."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("voice activity detection needs the silero-vad package (pip install silero-vad)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / MODEL
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the silero-vad package has no {MODEL}")
    import torch

    state = torch.jit.load(str(path), map_location="cpu")._model.state_dict()
    if set(state) != set(_NAMES):
        raise ValueError(f"{path}: not the Silero VAD v6 layout this code reads (tensors {sorted(state)})")
    return {_NAMES[k]: v.detach().numpy().astype(np.float32) for k, v in state.items()}


@cache
def _device_weights() -> dict[str, jax.Array]:
    """:func:`silero_weights` on the default device, moved there once."""
    return {k: jnp.asarray(v) for k, v in silero_weights().items()}


def _conv(x, w, b=None, stride=1, padding=0):
    """PyTorch's Conv1d on (frames, channels, time)."""
    y = lax.conv_general_dilated(x, w, (stride,), [(padding, padding)], dimension_numbers=("NCH", "OIH", "NCH"),
                                 precision=lax.Precision.HIGHEST)
    return y if b is None else y + b[:, None]


@jax.jit
def _probabilities(p: dict, frames: jax.Array) -> jax.Array:
    """(n, CONTEXT + FRAME) frames -> (n,) speech probabilities, the LSTM state carried along the frames."""
    x = jnp.pad(frames, ((0, 0), (0, CONTEXT)), mode="reflect")[:, None]
    x = _conv(x, p["stft_conv.weight"], stride=128)  # (n, 258, 4): real and imaginary parts of 129 bins
    x = jnp.sqrt(x[:, :129] ** 2 + x[:, 129:] ** 2)
    x = jax.nn.relu(_conv(x, p["conv1.weight"], p["conv1.bias"], padding=1))
    x = jax.nn.relu(_conv(x, p["conv2.weight"], p["conv2.bias"], stride=2, padding=1))
    x = jax.nn.relu(_conv(x, p["conv3.weight"], p["conv3.bias"], stride=2, padding=1))
    x = jax.nn.relu(_conv(x, p["conv4.weight"], p["conv4.bias"], padding=1))[:, :, 0]  # (n, 128)
    gates_x = jnp.dot(x, p["lstm_cell.weight_ih"].T, precision=lax.Precision.HIGHEST) + p["lstm_cell.bias_ih"]
    w_hh, b_hh = p["lstm_cell.weight_hh"].T, p["lstm_cell.bias_hh"]

    def step(carry, gx):  # PyTorch's LSTMCell: gates in the order input, forget, cell, output
        h, c = carry
        i, f, g, o = jnp.split(gx + jnp.dot(h, w_hh, precision=lax.Precision.HIGHEST) + b_hh, 4)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros(w_hh.shape[0], jnp.float32)
    _, h = lax.scan(step, (zeros, zeros), gates_x)
    logit = jax.nn.relu(h) @ p["final_conv.weight"][0, :, 0] + p["final_conv.bias"][0]
    return jax.nn.sigmoid(logit)


def speech_probabilities(audio: np.ndarray) -> np.ndarray:
    """Silero's speech probability of every 512-sample frame of 16 kHz ``audio`` (the last frame zero-padded),
    as its streaming model gives them frame by frame from a fresh state."""
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be a 1-D 16 kHz waveform, got shape {audio.shape}")
    n = -(-len(audio) // FRAME)
    if n == 0:
        return np.zeros(0, np.float32)
    padded = -(-n // _BUCKET) * _BUCKET  # frames after the audio are zeros: they change no earlier probability
    samples = np.zeros(CONTEXT + padded * FRAME, np.float32)
    samples[CONTEXT: CONTEXT + len(audio)] = audio
    starts = np.arange(padded)[:, None] * FRAME + np.arange(CONTEXT + FRAME)
    return np.asarray(_probabilities(_device_weights(), jnp.asarray(samples[starts])))[:n]


@dataclass(frozen=True)
class VadOptions:
    """Silero's ``get_speech_timestamps`` parameters (its defaults). ``neg_threshold`` None: ``threshold - 0.15``
    (at least 0.01). A region longer than ``max_speech_duration_s`` is cut at its longest pause of more than
    98 ms, else where it reaches the limit."""

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_duration_ms: float = 250
    max_speech_duration_s: float = math.inf
    min_silence_duration_ms: float = 100
    speech_pad_ms: float = 30

    def __post_init__(self):
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.neg_threshold is not None and not 0 < self.neg_threshold <= self.threshold:
            raise ValueError(f"neg_threshold must be in (0, threshold], got {self.neg_threshold}")
        for name in ("min_speech_duration_ms", "min_silence_duration_ms", "speech_pad_ms"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.max_speech_duration_s > 0:
            raise ValueError(f"max_speech_duration_s must be > 0, got {self.max_speech_duration_s}")


# What transcription uses by default (faster-whisper's BatchedInferencePipeline's): regions padded by 400 ms and
# ended by 160 ms pauses, none dropped for being short.
TRANSCRIBE_OPTIONS = VadOptions(min_speech_duration_ms=0, min_silence_duration_ms=160, speech_pad_ms=400)

_MIN_PAUSE_AT_MAX_SPEECH_MS = 98  # a pause must be longer than this to be a cut point of an over-long region


def speech_timestamps(probs: np.ndarray, n_samples: int, options: VadOptions = VadOptions()) -> list[tuple[int, int]]:
    """Speech regions ``[(start, end), ...]`` in samples from the frame probabilities of an ``n_samples`` long
    recording: a region starts at a frame >= ``threshold`` and ends where the probability has stayed below
    ``neg_threshold`` for ``min_silence_duration_ms``; regions of at most ``min_speech_duration_ms`` are dropped,
    over-long ones cut; then each is widened by ``speech_pad_ms`` (by half the pause when two would meet)."""
    o = options
    low = max(o.threshold - 0.15, 0.01) if o.neg_threshold is None else o.neg_threshold
    rate = SAMPLE_RATE / 1000
    min_speech, pad = rate * o.min_speech_duration_ms, rate * o.speech_pad_ms
    min_silence, min_pause = rate * o.min_silence_duration_ms, rate * _MIN_PAUSE_AT_MAX_SPEECH_MS
    max_speech = SAMPLE_RATE * o.max_speech_duration_s - FRAME - 2 * pad

    regions: list[list[int]] = []
    start: int | None = None  # the current region's start while in speech
    silence_from = 0  # where the current run of low probabilities began (0: none)
    pauses: list[tuple[int, int]] = []  # (start, length) of the pauses inside the current region
    for i, prob in enumerate(np.asarray(probs, np.float64)):
        here = FRAME * i
        if prob >= o.threshold and silence_from:
            if here - silence_from > min_pause:
                pauses.append((silence_from, here - silence_from))
            silence_from = 0
        if start is None:
            if prob >= o.threshold:
                start = here
            continue
        if here - start > max_speech:
            if pauses:  # cut at the longest pause; speech resumes after it (it ended before this frame)
                cut, length = max(pauses, key=lambda p: p[1])
                regions.append([start, cut])
                start, silence_from, pauses = cut + length, 0, []
            else:
                regions.append([start, here])
                start, silence_from, pauses = None, 0, []
                continue
        if prob < low:
            silence_from = silence_from or here
            if here - silence_from >= min_silence:
                if silence_from - start > min_speech:
                    regions.append([start, silence_from])
                start, silence_from, pauses = None, 0, []
    if start is not None and n_samples - start > min_speech:
        regions.append([start, n_samples])

    for i, r in enumerate(regions):
        if i == 0:
            r[0] = int(max(0, r[0] - pad))
        if i + 1 < len(regions):
            gap = regions[i + 1][0] - r[1]
            half = gap // 2 if gap < 2 * pad else pad
            r[1] = int(r[1] + half) if gap < 2 * pad else int(min(n_samples, r[1] + pad))
            regions[i + 1][0] = int(max(0, regions[i + 1][0] - half))
        else:
            r[1] = int(min(n_samples, r[1] + pad))
    return [(a, b) for a, b in regions]


def speech_windows(regions: list[tuple[int, int]], max_samples: int) -> list[tuple[int, int]]:
    """Consecutive speech regions joined into spans ``(start, end)`` of at most ``max_samples`` (the pauses
    between joined regions stay in); a region longer than that is split evenly."""
    windows: list[list[int]] = []
    for a, b in regions:
        if b - a > max_samples:
            n = -(-(b - a) // max_samples)
            cuts = [a + (b - a) * k // n for k in range(n + 1)]
            windows.extend([x, y] for x, y in zip(cuts, cuts[1:], strict=False))
        elif windows and b - windows[-1][0] <= max_samples:
            windows[-1][1] = b
        else:
            windows.append([a, b])
    return [(a, b) for a, b in windows]


__all__ = ["FRAME", "SAMPLE_RATE", "TRANSCRIBE_OPTIONS", "VadOptions", "silero_weights", "speech_probabilities",
           "speech_timestamps", "speech_windows"]
