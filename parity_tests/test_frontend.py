"""Log-mel frontend parity: jax_whisper.audio (JAX) vs torch_reference.audio (torchaudio) vs openai-whisper.

Every random input comes from the per-test seed of conftest.py, quoted in every assertion message.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
import torch
import whisper.audio

from jax_whisper import audio as ja
from parity_tests.helpers import check_close, to_np
from torch_reference import audio as ta

REPO = Path(__file__).resolve().parents[1]
JFK = REPO.parent / "shared" / "speech_eval" / "jfk" / "jfk.wav"
NPZ = Path(whisper.audio.__file__).parent / "assets" / "mel_filters.npz"
SR = 16000

FILTER_BOUND = 1e-6
MEL_BOUND = 1e-4


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def max_abs(a, b) -> float:
    a, b = to_np(a).astype(np.float64), to_np(b).astype(np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def check_mel(what: str, got, want, bound: float, seed: int | None = None) -> float:
    """Assert max|got - want| <= bound (and equal shapes); record and return the error."""
    return check_close(got, want, what=what, seed=seed, max_abs=bound)[1]


def make_signal(
    rng: np.random.Generator, n: int | None = None, gain: float = 1.0, noise_db: tuple = (-20.0, -10.0)
) -> np.ndarray:
    """3-7 s of Gaussian noise (std 10^(dB/20), dB uniform in ``noise_db``) plus 2-4 sines at random
    frequency, phase and amplitude (0.01-0.3), all times ``gain``; float32.

    The noise level matters for float32 parity: an FFT's round-off is ~1e-7 of the frame's energy in *every*
    bin, so a mel bin lying 7-8 decades below its frame's peak (just above the max-8 clamp) carries ~1e-4 of
    log-mel error in any float32 implementation, openai-whisper's included (see test_near_clamp_floor...).
    White noise in a one-FFT-bin mel filter (most of the low 128-mel filters) has exponentially distributed
    power, so the deepest dips go lower the quieter the noise is relative to the sines. With noise at -20..-10
    dB the worst JAX-vs-openai error over 600 random draws was 8.8e-5; at -40..-20 dB it reached 1.2e-4.
    """
    n = int(rng.uniform(3.0, 7.0) * SR) if n is None else n
    t = np.arange(n) / SR
    x = rng.standard_normal(n) * 10 ** (rng.uniform(*noise_db) / 20)
    for _ in range(rng.integers(2, 5)):
        f0, amp, phase = rng.uniform(60.0, 7800.0), rng.uniform(0.01, 0.3), rng.uniform(0, 2 * np.pi)
        x += amp * np.sin(2 * np.pi * f0 * t + phase)
    return (gain * x).astype(np.float32)


def openai_log_mel(audio: np.ndarray, n_mels: int, padding: int = 0) -> np.ndarray:
    return whisper.audio.log_mel_spectrogram(torch.from_numpy(audio), n_mels=n_mels, padding=padding).numpy()


def log_mel_float64(audio: np.ndarray, n_mels: int) -> np.ndarray:
    """The same recipe in numpy float64 (npz filters): the "truth" both float32 frontends approximate."""
    x = np.pad(audio.astype(np.float64), (200, 200), mode="reflect")
    n_frames = audio.shape[-1] // 160
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = x[np.arange(n_frames)[:, None] * 160 + np.arange(400)] * window
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    with np.load(NPZ) as f:
        mel = f[f"mel_{n_mels}"].astype(np.float64) @ power.T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def three_way(tag: str, audio: np.ndarray, n_mels: int, padding: int, seed: int | None) -> None:
    ref = openai_log_mel(audio, n_mels, padding)
    assert ref.shape == (n_mels, (audio.shape[-1] + padding) // 160)
    j = ja.log_mel_spectrogram(audio, n_mels=n_mels, padding=padding)
    t = ta.log_mel_spectrogram(torch.from_numpy(audio), n_mels=n_mels, padding=padding)
    assert j.dtype == jnp.float32 and t.dtype == torch.float32
    check_mel(f"{tag} JAX vs openai-whisper", j, ref, MEL_BOUND, seed)
    check_mel(f"{tag} torch vs openai-whisper", t, ref, MEL_BOUND, seed)
    check_mel(f"{tag} JAX vs torch", j, t, MEL_BOUND, seed)


# ----------------------------------------------------------------------------------------------------------
# Filterbanks
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_jax_numpy_vs_npz(n_mels):
    with np.load(NPZ) as f:
        ref = f[f"mel_{n_mels}"]
    got = ja.mel_filters(n_mels)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (n_mels, 201)
    check_mel(f"JAX-side filters mel_{n_mels} vs npz", got, ref, FILTER_BOUND)
    assert ja.mel_filters(n_mels) is got, "mel_filters is not cached"


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_torchaudio_vs_npz(n_mels):
    with np.load(NPZ) as f:
        ref = f[f"mel_{n_mels}"]
    got = ta.mel_filters(n_mels)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and tuple(got.shape) == (n_mels, 201)
    check_mel(f"torchaudio filters mel_{n_mels} vs npz", got, ref, FILTER_BOUND)


# ----------------------------------------------------------------------------------------------------------
# Log-mel: one example, three implementations
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", [0, 4321, ja.N_SAMPLES])
@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_random_signal_three_way(n_mels, padding, seed):
    rng = np.random.default_rng(seed)
    audio = make_signal(rng)
    print(f"  {audio.shape[0]} samples, padding {padding}")
    three_way(f"noise+sines n_mels={n_mels} padding={padding}", audio, n_mels, padding, seed)


@pytest.mark.parametrize("padding", [0, ja.N_SAMPLES])
@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_speech_three_way(n_mels, padding):
    if not JFK.exists():
        pytest.skip(f"speech file {JFK} not present")
    audio, file_sr = sf.read(JFK, dtype="float32")
    assert file_sr == SR and audio.ndim == 1
    np.testing.assert_array_equal(ja.load_audio(JFK), audio)  # 16 kHz mono: load_audio is a plain decode
    three_way(f"jfk.wav n_mels={n_mels} padding={padding}", audio, n_mels, padding, None)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_near_clamp_floor_float32_vs_float64(n_mels, seed):
    """Loud sines over noise at -70..-60 dB put mel bins 7-8 decades below their frame's peak, where float32
    FFT round-off dominates: there JAX and torch may differ from openai-whisper by a few 1e-4, but each is as
    close to the float64 truth as openai-whisper itself is."""
    rng = np.random.default_rng(seed)
    audio = make_signal(rng, noise_db=(-70.0, -60.0))
    truth = log_mel_float64(audio, n_mels)
    ref = openai_log_mel(audio, n_mels)
    j = ja.log_mel_spectrogram(audio, n_mels=n_mels)
    t = ta.log_mel_spectrogram(torch.from_numpy(audio), n_mels=n_mels)
    print(
        f"  (here JAX vs openai-whisper {max_abs(j, ref):.3e}, torch vs openai-whisper {max_abs(t, ref):.3e})"
    )
    check_mel(f"openai-whisper vs float64 (n_mels={n_mels})", ref, truth, 5e-4, seed)
    check_mel(f"JAX vs float64 (n_mels={n_mels})", j, truth, 5e-4, seed)
    check_mel(f"torch vs float64 (n_mels={n_mels})", t, truth, 5e-4, seed)


# ----------------------------------------------------------------------------------------------------------
# Batched: per-example max, jit, vmap
# ----------------------------------------------------------------------------------------------------------


def _loudness_batch(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.uniform(2.0, 4.0) * SR)
    gains = [1e-4, 1e-2, 1.0, 3.0]  # 90 dB apart: a shared max would flatten the quiet ones
    return np.stack([make_signal(rng, n, g) for g in gains])


def test_batched_per_example_max_jax(seed):
    rng = np.random.default_rng(seed)
    batch = _loudness_batch(rng)
    got = ja.log_mel_spectrogram(batch, n_mels=80)
    assert got.shape == (4, 80, batch.shape[1] // 160)
    for i in range(len(batch)):
        alone = ja.log_mel_spectrogram(batch[i], n_mels=80)
        check_mel(f"JAX batch[{i}] vs alone", got[i], alone, MEL_BOUND, seed)
        ref = openai_log_mel(batch[i], 80)
        check_mel(f"JAX batch[{i}] vs openai-whisper alone", got[i], ref, MEL_BOUND, seed)
    # Extra leading dims and vmap give the same thing.
    nested = ja.log_mel_spectrogram(batch.reshape(2, 2, -1))
    check_mel(
        "JAX (2, 2, samples) vs (4, samples)", nested, np.reshape(got, (2, 2, 80, -1)), MEL_BOUND, seed
    )
    vmapped = jax.vmap(ja.log_mel_spectrogram)(jnp.asarray(batch))
    check_mel("JAX vmap vs batched", vmapped, got, MEL_BOUND, seed)
    # The test has teeth: openai-whisper's shared max over the batch is far from the per-example result.
    shared = whisper.audio.log_mel_spectrogram(torch.from_numpy(batch)).numpy()
    gap = max_abs(shared[0], got[0])
    print(f"  shared-max (openai-whisper on the batch) vs per-example, quietest example: {gap:.3f}")
    assert gap > 0.5, f"shared and per-example max agree ({gap}): the batch tests nothing (seed={seed})"


def test_batched_per_example_max_torch(seed):
    rng = np.random.default_rng(seed)
    batch = torch.from_numpy(_loudness_batch(rng))
    got = ta.log_mel_spectrogram(batch, n_mels=128)
    assert tuple(got.shape) == (4, 128, batch.shape[1] // 160)
    for i in range(len(batch)):
        alone = ta.log_mel_spectrogram(batch[i], n_mels=128)
        check_mel(f"torch batch[{i}] vs alone", got[i], alone, MEL_BOUND, seed)
        ref = whisper.audio.log_mel_spectrogram(batch[i], n_mels=128)
        check_mel(f"torch batch[{i}] vs openai-whisper alone", got[i], ref, MEL_BOUND, seed)
    check_mel(
        "torch (2, 2, samples) vs (4, samples)",
        ta.log_mel_spectrogram(batch.reshape(2, 2, -1), 128),
        got.reshape(2, 2, 128, -1),
        MEL_BOUND,
        seed,
    )
    check_mel("JAX batch vs torch batch", ja.log_mel_spectrogram(batch.numpy(), 128), got, MEL_BOUND, seed)


@pytest.mark.parametrize("n_mels,padding", [(80, 0), (128, 1000)])
def test_jax_jit_equals_eager(n_mels, padding, seed):
    rng = np.random.default_rng(seed)
    batch = np.stack([make_signal(rng, 3 * SR + 77, g) for g in (0.01, 1.0)])
    fn = functools.partial(ja.log_mel_spectrogram, n_mels=n_mels, padding=padding)
    eager = fn(batch)
    jitted = jax.jit(fn)(jnp.asarray(batch))
    check_mel(f"JAX jit vs eager (n_mels={n_mels}, padding={padding})", jitted, eager, MEL_BOUND, seed)
    # Wrapping pad_or_trim + log-mel in one jit (the transcribe path) works with static shapes.
    window = jax.jit(lambda a: ja.log_mel_spectrogram(ja.pad_or_trim(a, 4 * SR), n_mels=n_mels))(batch)
    want = ta.log_mel_spectrogram(ta.pad_or_trim(torch.from_numpy(batch), 4 * SR), n_mels)
    check_mel("JAX jit(pad_or_trim+log-mel) vs torch", window, want, MEL_BOUND, seed)


# ----------------------------------------------------------------------------------------------------------
# Shapes, bad input, pad_or_trim
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [201, 320, 399, 16000, 16159, 16160, 80000])
def test_frame_count(n, seed):
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(n)).astype(np.float32)
    expected = n // 160
    assert ja.frames_for(n) == ta.frames_for(n) == expected
    assert ja.log_mel_spectrogram(audio).shape == (80, expected), f"seed={seed}"
    assert tuple(ta.log_mel_spectrogram(torch.from_numpy(audio)).shape) == (80, expected), f"seed={seed}"
    assert openai_log_mel(audio, 80).shape == (80, expected)
    # Shape-only checks through jax.eval_shape (traces, no XLA compile: keeps the test fast).
    padded = jax.eval_shape(functools.partial(ja.log_mel_spectrogram, padding=160), audio)
    assert padded.shape == (80, expected + 1) and padded.dtype == jnp.float32
    assert jax.eval_shape(ja.log_mel_spectrogram, audio[None, None]).shape == (1, 1, 80, expected)


def test_window_helpers():
    from jax_whisper.config import WhisperConfig

    assert ja.samples_for(ja.N_FRAMES) == ja.N_SAMPLES == 480000 and ja.N_FRAMES == 3000
    assert ja.samples_for(500) == 80000 and ja.frames_for(80000) == 500
    cfg = WhisperConfig.preset("seed")
    n = ja.samples_for(cfg.n_frames)
    assert n == cfg.n_frames * ja.HOP_LENGTH and ja.frames_for(n) == cfg.n_frames
    for mod in (ja, ta):
        assert (mod.SAMPLE_RATE, mod.N_FFT, mod.HOP_LENGTH, mod.CHUNK_LENGTH) == (16000, 400, 160, 30)
        assert (mod.N_SAMPLES, mod.N_FRAMES) == (480000, 3000)


def test_bad_input_errors():
    for fn, wrap in ((ja.log_mel_spectrogram, np.asarray), (ta.log_mel_spectrogram, torch.as_tensor)):
        with pytest.raises(ValueError, match=r"audio .*\(\.\.\., samples\).*\(2, 200\)"):
            fn(wrap(np.zeros((2, 200), np.float32)))
        with pytest.raises(ValueError, match="audio"):
            fn(wrap(np.zeros(1000, np.int16)))
        with pytest.raises(ValueError, match="padding"):
            fn(wrap(np.zeros(1000, np.float32)), padding=-1)
        assert fn(wrap(np.zeros(100, np.float32)), padding=101).shape[-1] == 1  # padding counts


@pytest.mark.parametrize("kind", ["numpy", "jax", "torch"])
def test_pad_or_trim(kind, seed):
    rng = np.random.default_rng(seed)
    mod = ta if kind == "torch" else ja
    conv = {"numpy": np.asarray, "jax": jnp.asarray, "torch": torch.from_numpy}[kind]
    audio_np = rng.standard_normal((2, 1000)).astype(np.float32)
    mel_np = rng.standard_normal((80, 37)).astype(np.float32)
    cases = [  # (array, length, axis)
        (audio_np, 1500, -1),
        (audio_np, 640, -1),
        (audio_np, 1000, -1),  # audio, pad / trim / same
        (mel_np, 50, -1),
        (mel_np, 30, -1),  # (n_mels, frames): frames axis
        (mel_np.T.copy(), 50, 0),
        (mel_np.T.copy(), 30, 0),  # (frames, n_mels): axis 0
    ]
    for arr, length, axis in cases:
        out = mod.pad_or_trim(conv(arr), length, axis=axis)
        assert type(out) is type(conv(arr)) or (kind == "jax" and isinstance(out, jax.Array)), type(out)
        out = to_np(out)
        ax = axis % arr.ndim
        want_shape = list(arr.shape)
        want_shape[ax] = length
        assert list(out.shape) == want_shape, f"{kind} {arr.shape} -> {length} on axis {axis}: {out.shape}"
        keep = min(length, arr.shape[ax])
        np.testing.assert_array_equal(np.take(out, range(keep), axis=ax), np.take(arr, range(keep), axis=ax))
        if length > arr.shape[ax]:
            assert not np.take(out, range(keep, length), axis=ax).any(), "padding is not zeros"
    assert to_np(mod.pad_or_trim(conv(audio_np[0]))).shape == (ja.N_SAMPLES,)  # default: 30 s of audio
    with pytest.raises(ValueError):
        mod.pad_or_trim(conv(audio_np), 10, axis=2)


# ----------------------------------------------------------------------------------------------------------
# load_audio
# ----------------------------------------------------------------------------------------------------------


def test_load_audio_stereo_flac_44k(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = 44100 + int(rng.integers(0, 44100))
    t = np.arange(n) / 44100
    f_l, f_r = rng.uniform(200, 1000), rng.uniform(1000, 3000)
    stereo = np.stack([0.5 * np.sin(2 * np.pi * f_l * t), 0.3 * np.sin(2 * np.pi * f_r * t)], axis=1)
    path = tmp_path / "stereo_44k.flac"
    sf.write(path, stereo, 44100, subtype="PCM_24", format="FLAC")
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (44100, 2, "PCM_24")

    got = ja.load_audio(path)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.ndim == 1
    want_len = n * SR / 44100
    print(f"  {n} samples at 44.1 kHz -> {got.shape[0]} at 16 kHz (exact {want_len:.2f})")
    assert abs(got.shape[0] - want_len) <= 1, f"length {got.shape[0]} vs {want_len:.2f} (seed={seed})"
    # Content: the mean of the channels, resampled. Compare away from the edges (filter transients).
    t16 = np.arange(got.shape[0]) / SR
    mono = 0.25 * np.sin(2 * np.pi * f_l * t16) + 0.15 * np.sin(2 * np.pi * f_r * t16)
    check_mel("load_audio FLAC 44.1k stereo vs analytic mono", got[200:-200], mono[200:-200], 1e-4, seed)


def test_load_audio_wav_16k(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8000, 24000))
    audio = (0.3 * rng.standard_normal(n)).clip(-0.99, 0.99).astype(np.float32)
    path = tmp_path / "mono_16k.wav"
    sf.write(path, audio, SR, subtype="PCM_16")
    got = ja.load_audio(str(path))
    assert got.dtype == np.float32 and got.shape == (n,), f"{got.shape} (seed={seed})"
    # libsndfile writes float -> int16 scaled by 32767 and reads back scaled by 1/32768: up to 1.5 LSB.
    check_mel("load_audio WAV 16k vs written (PCM_16 quantisation)", got, audio, 2.0 / 32768, seed)


def test_load_audio_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    no_frames = tmp_path / "no_frames.wav"
    sf.write(no_frames, np.zeros((0, 1), np.float32), SR)
    for path in (empty, corrupt, no_frames):
        with pytest.raises(ValueError) as info:
            ja.load_audio(path)
        print(f"  {path.name}: {info.value}")
        assert str(path) in str(info.value), f"error does not name the file: {info.value}"
    missing = tmp_path / "missing.wav"
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        ja.load_audio(missing)


# ----------------------------------------------------------------------------------------------------------
# torch_reference must not import jax
# ----------------------------------------------------------------------------------------------------------


def test_torch_frontend_does_not_import_jax():
    code = (
        "import sys, torch_reference.audio as a, torch\n"
        "a.log_mel_spectrogram(torch.zeros(1000))\n"
        "bad = sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'jax_whisper.')) "
        "and m != 'jax_whisper.config')\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
