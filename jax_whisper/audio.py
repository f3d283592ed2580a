"""Whisper's log-mel frontend in ``jax.numpy`` (batched, jit- and vmap-compatible), plus audio I/O.

Same recipe as openai-whisper (``whisper/audio.py``): 16 kHz audio, n_fft 400, hop 160, periodic Hann
window, centered STFT with reflect padding, the last frame dropped (``n_frames = samples // 160``), power
spectrum, Slaney mel filterbank, ``log10(max(x, 1e-10))``, dynamic-range clamp to ``max - 8``, then
``(x + 4) / 4``. One deliberate difference: openai-whisper takes the max over the whole input tensor (a batch
shares one max); we take it **per example** (over that example's ``(n_mels, n_frames)``), so a batch of one
equals openai-whisper and a batch never leaks loudness between examples.

The mel filterbank is computed here in numpy (librosa's ``filters.mel(htk=False, norm="slaney")``
definition); it matches openai-whisper's shipped ``mel_filters.npz`` to ~1e-8.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30  # seconds in openai-whisper's full window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames

ArrayLike = np.ndarray | jax.Array


# ----------------------------------------------------------------------------------------------------------
# Window bookkeeping
# ----------------------------------------------------------------------------------------------------------


def frames_for(n_samples: int) -> int:
    """Mel frames produced by ``log_mel_spectrogram`` for ``n_samples`` samples (``n_samples // 160``)."""
    return int(n_samples) // HOP_LENGTH


def samples_for(n_frames: int) -> int:
    """Samples that fill ``n_frames`` mel frames exactly (``n_frames * 160``).

    A config's window is ``cfg.n_frames`` mel frames = ``samples_for(cfg.n_frames)`` samples, e.g. 3000 frames
    = 480000 samples (30 s) for the OpenAI sizes and 500 frames = 80000 samples (5 s) for ``seed``.
    """
    return int(n_frames) * HOP_LENGTH


def pad_or_trim(array: ArrayLike, length: int = N_SAMPLES, *, axis: int = -1) -> ArrayLike:
    """Zero-pad or cut ``array`` along ``axis`` to exactly ``length`` entries.

    Works for audio ``(..., samples)`` and for mel spectrograms ``(..., n_mels, frames)`` (cut/pad frames with
    ``axis=-1``). numpy in -> numpy out, jax in -> jax out (static shapes, fine under ``jax.jit``). Note that
    zero-padding a *mel* pads with 0, not with the log-mel of silence; to pad audio-equivalently, pad the
    audio before ``log_mel_spectrogram`` (or use its ``padding`` argument).
    """
    length = int(length)
    if length < 0:
        raise ValueError(f"pad_or_trim: length must be >= 0, got {length}")
    xp = np if isinstance(array, np.ndarray) else jnp
    if xp is jnp:
        array = jnp.asarray(array)
    if array.ndim == 0:
        raise ValueError("pad_or_trim: array must have at least one dimension, got a scalar")
    axis = axis % array.ndim if -array.ndim <= axis < array.ndim else None
    if axis is None:
        raise ValueError(f"pad_or_trim: axis out of range for array of shape {tuple(array.shape)}")
    n = array.shape[axis]
    if n > length:
        index = [slice(None)] * array.ndim
        index[axis] = slice(0, length)
        return array[tuple(index)]
    if n < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - n)
        return xp.pad(array, widths)
    return array


# ----------------------------------------------------------------------------------------------------------
# Mel filterbank (numpy, float64 math)
# ----------------------------------------------------------------------------------------------------------

_F_SP = 200.0 / 3  # Slaney: linear below 1 kHz, 66.67 Hz per mel
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15
_LOGSTEP = np.log(6.4) / 27.0  # log above 1 kHz


def _hz_to_mel(freqs: np.ndarray) -> np.ndarray:
    freqs = np.asarray(freqs, dtype=np.float64)
    mels = freqs / _F_SP
    log_region = freqs >= _MIN_LOG_HZ
    safe = np.where(log_region, freqs, _MIN_LOG_HZ)
    return np.where(log_region, _MIN_LOG_MEL + np.log(safe / _MIN_LOG_HZ) / _LOGSTEP, mels)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    freqs = _F_SP * mels
    log_region = mels >= _MIN_LOG_MEL
    return np.where(log_region, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels - _MIN_LOG_MEL)), freqs)


@functools.cache
def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney mel filterbank (Slaney-normalised), ``(n_mels, n_fft // 2 + 1)`` float32, read-only, cached.

    librosa's ``filters.mel(sr, n_fft, n_mels, fmin=0, fmax=sr/2, htk=False, norm="slaney")``: triangles
    between consecutive points of ``n_mels + 2`` mel-spaced frequencies, each scaled by
    ``2 / (f[i+2] - f[i])`` so every filter has roughly constant energy. This is what openai-whisper ships
    as ``mel_filters.npz`` (mel_80, mel_128).
    """
    n_mels, sample_rate, n_fft = int(n_mels), int(sample_rate), int(n_fft)
    if n_mels <= 0 or sample_rate <= 0 or n_fft <= 0:
        raise ValueError(
            f"mel_filters: need positive n_mels, sample_rate, n_fft; got {n_mels}, {sample_rate}, {n_fft}"
        )
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)  # (n_fft//2 + 1,)
    mel_pts = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2.0), n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts)  # (n_mels + 2,)
    fdiff = np.diff(hz_pts)  # (n_mels + 1,)
    ramps = hz_pts[:, None] - fft_freqs[None, :]  # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
    out = weights.astype(np.float32)
    out.flags.writeable = False  # shared through the cache
    return out


# ----------------------------------------------------------------------------------------------------------
# Log-mel spectrogram
# ----------------------------------------------------------------------------------------------------------


@functools.cache
def _hann_window(n_fft: int) -> np.ndarray:
    # Periodic Hann (torch.hann_window default): 0.5 - 0.5 cos(2 pi n / N), n = 0..N-1.
    n = np.arange(n_fft, dtype=np.float64)
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)).astype(np.float32)
    w.flags.writeable = False
    return w


@functools.cache
def _frame_index(n_frames: int) -> np.ndarray:
    idx = np.arange(n_frames, dtype=np.int32)[:, None] * HOP_LENGTH + np.arange(N_FFT, dtype=np.int32)[None]
    idx.flags.writeable = False
    return idx


def log_mel_spectrogram(audio: ArrayLike, n_mels: int = 80, padding: int = 0) -> jax.Array:
    """Whisper log-mel spectrogram: audio ``(..., samples)`` at 16 kHz -> ``(..., n_mels, samples' // 160)``.

    ``samples' = samples + padding``: ``padding`` zero samples are appended first (as in openai-whisper,
    e.g. ``padding=N_SAMPLES`` before cutting 30 s windows). Any leading (batch) dims are kept and the
    dynamic-range clamp uses each example's own max. ``n_mels`` and ``padding`` must be Python ints (static
    under ``jax.jit``); the audio may be a numpy or jax array (floating dtype, cast to float32) or a tracer.

    Design: the STFT frames are gathered with one static index array ``(n_frames, 400)`` from the
    reflect-padded signal and transformed with ``jnp.fft.rfft``. Only the ``samples // 160`` frames we keep
    are built (the dropped last frame is never computed), shapes are static (jit/vmap-friendly), and the
    FFT is O(n log n) in float32 rather than a dense 400x201 DFT matmul. The mel projection runs at
    ``Precision.HIGHEST`` so accelerators don't silently use bf16/tf32 passes.

    Accuracy: float32 FFT round-off (XLA's and torch's alike) is ~1e-7 of a frame's energy in every bin, so
    a mel bin 7-8 decades below its frame's peak (just above the max-8 clamp) can differ from openai-whisper
    by ~1e-4 (each is that far from a float64 computation); typical bins agree to ~1e-6.
    """
    n_mels, padding = int(n_mels), int(padding)
    if padding < 0:
        raise ValueError(f"log_mel_spectrogram: padding must be >= 0, got {padding}")
    if not isinstance(audio, jax.Array):  # numpy, lists, torch CPU tensors, ...
        audio = np.asarray(audio)
    if not jnp.issubdtype(audio.dtype, jnp.floating):
        raise ValueError(
            "log_mel_spectrogram: audio must be a floating-point waveform in [-1, 1] with shape "
            f"(..., samples), got dtype {audio.dtype} (convert integer PCM with x / 32768.0)"
        )
    if audio.ndim < 1:
        raise ValueError("log_mel_spectrogram: audio must have shape (..., samples), got a scalar")
    n_samples = audio.shape[-1] + padding
    pad = N_FFT // 2
    if n_samples <= pad:
        raise ValueError(
            f"log_mel_spectrogram: audio must have shape (..., samples) with samples + padding > {pad} "
            f"(reflect padding of the centered STFT), got audio of shape {tuple(audio.shape)} "
            f"and padding={padding}"
        )

    x = jnp.asarray(audio, dtype=jnp.float32)
    lead = x.shape[:-1]
    if padding:
        x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, padding)])
    # Centered STFT: reflect-pad n_fft//2 each side (edge sample not repeated, like torch's "reflect").
    x = jnp.pad(x, [(0, 0)] * len(lead) + [(pad, pad)], mode="reflect")
    n_frames = n_samples // HOP_LENGTH  # torch gives 1 + n_samples // hop frames; we drop the last one
    frames = x[..., _frame_index(n_frames)] * _hann_window(N_FFT)  # (..., n_frames, n_fft)
    spec = jnp.fft.rfft(frames, axis=-1)  # (..., n_frames, n_fft//2 + 1) complex64
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2

    filters = jnp.asarray(mel_filters(n_mels))  # (n_mels, n_freqs)
    mel = jnp.einsum("mf,...tf->...mt", filters, power, precision=jax.lax.Precision.HIGHEST)

    log_spec = jnp.log10(jnp.maximum(mel, 1e-10))
    peak = jnp.max(log_spec, axis=(-2, -1), keepdims=True)  # per example
    log_spec = jnp.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0


# ----------------------------------------------------------------------------------------------------------
# Audio I/O (numpy only)
# ----------------------------------------------------------------------------------------------------------


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an audio file (anything libsndfile reads: WAV, FLAC, OGG, MP3, ...) to mono float32 at ``sr``.

    Channels are averaged; the rate is converted with soxr (VHQ) when it differs. Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` (naming the file) when it can't be decoded or
    holds no samples. The decoder itself is :func:`jax_whisper.datasets.read_audio_file`, shared with the
    jax-free data pipeline.
    """
    from jax_whisper.datasets import read_audio_file

    return read_audio_file(path, sr)
