"""Whisper's log-mel frontend in PyTorch, built on torchaudio (batched; never imports jax).

Same recipe and names as ``jax_whisper.audio``: n_fft 400, hop 160, periodic Hann window, centered STFT with
reflect padding, last frame dropped (``n_frames = samples // 160``), power spectrum, Slaney mel filterbank
(``torchaudio.functional.melscale_fbanks(norm="slaney", mel_scale="slaney")``), ``log10(max(x, 1e-10))``,
dynamic-range clamp to ``max - 8`` taken **per example** (openai-whisper shares one max across the whole
input tensor; for a batch of one the two agree), then ``(x + 4) / 4``.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000


def frames_for(n_samples: int) -> int:
    """Mel frames produced for ``n_samples`` samples (``n_samples // 160``)."""
    return int(n_samples) // HOP_LENGTH


def samples_for(n_frames: int) -> int:
    """Samples that fill ``n_frames`` mel frames exactly (``n_frames * 160``)."""
    return int(n_frames) * HOP_LENGTH


def pad_or_trim(array, length: int = N_SAMPLES, *, axis: int = -1):
    """Zero-pad or cut ``array`` (torch tensor or numpy array) along ``axis`` to ``length`` entries."""
    length = int(length)
    if length < 0:
        raise ValueError(f"pad_or_trim: length must be >= 0, got {length}")
    if array.ndim == 0:
        raise ValueError("pad_or_trim: array must have at least one dimension, got a scalar")
    if not -array.ndim <= axis < array.ndim:
        raise ValueError(f"pad_or_trim: axis {axis} out of range for array of shape {tuple(array.shape)}")
    axis = axis % array.ndim
    n = array.shape[axis]
    if n > length:
        index = [slice(None)] * array.ndim
        index[axis] = slice(0, length)
        return array[tuple(index)]
    if n < length:
        if isinstance(array, torch.Tensor):
            # F.pad takes (left, right) pairs starting from the LAST dim.
            widths = [0, 0] * (array.ndim - 1 - axis) + [0, length - n]
            return torch.nn.functional.pad(array, widths)
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - n)
        return np.pad(array, widths)
    return array


_DEFAULT_DTYPE_LOCK = threading.Lock()


@functools.cache
def _mel_filters(n_mels: int, sample_rate: int, n_fft: int) -> torch.Tensor:
    # melscale_fbanks builds its frequency grids with torch.linspace in the *default* dtype. In float32 the
    # tiny weights at the triangle edges come out with up to ~3e-3 relative error (1.6e-7 abs vs openai's
    # mel_filters.npz), enough to move a log-mel value by ~1e-4 when a loud sine sits on an edge bin. So we
    # build the bank in float64 (once per n_mels, cached; the default dtype is restored at once) and cast.
    with _DEFAULT_DTYPE_LOCK:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            fb = AF.melscale_fbanks(
                n_freqs=n_fft // 2 + 1,
                f_min=0.0,
                f_max=sample_rate / 2.0,
                n_mels=n_mels,
                sample_rate=sample_rate,
                norm="slaney",
                mel_scale="slaney",
            )  # (n_freqs, n_mels)
        finally:
            torch.set_default_dtype(previous)
    return fb.T.to(torch.float32).contiguous()


def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised mel filterbank ``(n_mels, n_fft // 2 + 1)`` float32 (a fresh copy)."""
    return _mel_filters(int(n_mels), int(sample_rate), int(n_fft)).clone()


@functools.cache
def _hann_window(n_fft: int) -> torch.Tensor:
    return torch.hann_window(n_fft, periodic=True, dtype=torch.float32)


def log_mel_spectrogram(audio: torch.Tensor, n_mels: int = 80, padding: int = 0) -> torch.Tensor:
    """Whisper log-mel spectrogram: audio ``(..., samples)`` -> ``(..., n_mels, (samples + padding) // 160)``.

    ``audio``: float waveform at 16 kHz (a tensor; numpy arrays are accepted too), computed in float32 on the
    tensor's device. ``padding`` zero samples are appended first (as in openai-whisper). The ``max - 8`` clamp
    uses each example's own max over its ``(n_mels, n_frames)``.
    """
    n_mels, padding = int(n_mels), int(padding)
    if padding < 0:
        raise ValueError(f"log_mel_spectrogram: padding must be >= 0, got {padding}")
    if not torch.is_tensor(audio):
        audio = torch.from_numpy(np.asarray(audio))
    if not audio.is_floating_point():
        raise ValueError(
            "log_mel_spectrogram: audio must be a floating-point waveform in [-1, 1] with shape "
            f"(..., samples), got dtype {audio.dtype} (convert integer PCM with x / 32768.0)"
        )
    if audio.ndim < 1:
        raise ValueError("log_mel_spectrogram: audio must have shape (..., samples), got a scalar")
    n_samples = audio.shape[-1] + padding
    if n_samples <= N_FFT // 2:
        raise ValueError(
            "log_mel_spectrogram: audio must have shape (..., samples) with "
            f"samples + padding > {N_FFT // 2} (reflect padding of the centered STFT), "
            f"got audio of shape {tuple(audio.shape)} and padding={padding}"
        )

    x = audio.to(torch.float32)
    if padding:
        x = torch.nn.functional.pad(x, (0, padding))
    window = _hann_window(N_FFT).to(x.device)
    # torchaudio flattens leading dims, runs torch.stft(center=True, pad_mode="reflect"), |X|^2.
    power = AF.spectrogram(
        x,
        pad=0,
        window=window,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        win_length=N_FFT,
        power=2.0,
        normalized=False,
        center=True,
        pad_mode="reflect",
        onesided=True,
    )  # (..., n_freqs, 1 + n_samples // hop)
    power = power[..., :-1]  # drop the last frame

    filters = _mel_filters(n_mels, SAMPLE_RATE, N_FFT).to(x.device)
    mel = filters @ power  # (..., n_mels, n_frames)

    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)  # per example
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0
