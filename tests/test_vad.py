"""Voice activity detection (``jax_whisper.vad``) and the chunked path's speech-placed chunks.

The network is checked against Silero's own ONNX model (run frame by frame by the silero-vad package with
onnxruntime) on every ``../shared/speech_eval`` file, on noise and on silence; the speech timestamps against
Silero's ``get_speech_timestamps_from_probs`` on random probability sequences (over-long regions, pauses of every
length) and on the real files; then tiny.en transcribes with ``vad=True`` a recording with a long silence and
~95 s of consecutive LibriSpeech utterances. Tests that need the corpus, onnxruntime or tiny.en skip without them.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest

from jax_whisper import vad
from jax_whisper.chunked import Chunk, speech_chunks, stitch, transcribe_chunked
from jax_whisper.tokenizer import get_tokenizer

try:  # the tiny.en and JFK fixtures and the corpus location, shared with the sequential path's tests
    from tests.test_transcribe import SPEECH, jfk, tiny  # noqa: F401
except pytest.skip.Exception as e:  # no openai-whisper: the tests that need tiny.en or the corpus skip
    SPEECH, _missing = None, str(e)

    @pytest.fixture(scope="module")
    def tiny():
        pytest.skip(_missing)

    @pytest.fixture(scope="module")
    def jfk():
        pytest.skip(_missing)


@pytest.fixture(scope="module")
def jfk_60s(jfk) -> tuple[np.ndarray, int, int]:
    """JFK, silence, JFK: 60 s in all, as tests/test_transcribe.py's long-form tests build it; with the samples
    where the first clip ends and the second begins."""
    gap = 60 * 16000 - 2 * len(jfk)
    return np.concatenate([jfk, np.zeros(gap, np.float32), jfk]), len(jfk), len(jfk) + gap


@pytest.fixture(scope="module")
def silero():
    """The silero-vad package's own pieces: its ONNX model (onnxruntime) and its probability -> timestamps rule.
    Importing it sets torch's thread count to 1; the count is put back."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
        from silero_vad.utils_vad import get_speech_timestamps_from_probs
    finally:
        torch.set_num_threads(threads)
    return {"onnx": load_silero_vad(onnx=True), "from_probs": get_speech_timestamps_from_probs, "torch": torch}


def _corpus() -> list[tuple[str, np.ndarray]]:
    from jax_whisper.benchmark import speech_corpus

    if SPEECH is None or not (SPEECH / "manifest.jsonl").is_file():
        pytest.skip(f"no speech_eval corpus at {SPEECH}")
    audios, rows = speech_corpus(SPEECH)
    return [(r["id"], a) for r, a in zip(rows, audios, strict=True)]


def _theirs(silero, probs, n, options: vad.VadOptions):
    regions = silero["from_probs"](list(map(float, probs)), audio_length_samples=n, **asdict(options))
    return [(d["start"], d["end"]) for d in regions]


def test_probabilities_match_silero_onnx(silero):
    """Every speech_eval file, 20 s of noise and 3 s of silence: the probabilities of every frame within 2e-5 of
    Silero's ONNX model run frame by frame; the speech timestamps (Silero's defaults and transcription's) equal to
    those Silero derives from its own probabilities."""
    rng = np.random.default_rng(0)
    items = _corpus() + [("noise", (0.1 * rng.standard_normal(20 * 16000)).astype(np.float32)),
                         ("silence", np.zeros(3 * 16000 + 100, np.float32))]
    worst, frames = 0.0, 0
    for name, audio in items:
        ours = vad.speech_probabilities(audio)
        theirs = silero["onnx"].audio_forward(silero["torch"].from_numpy(audio), 16000).numpy()[0]
        assert ours.shape == theirs.shape == (math.ceil(len(audio) / vad.FRAME),), name
        err = float(np.abs(ours - theirs).max())
        assert err <= 2e-5, f"{name}: probabilities differ by {err:.2e}"
        worst, frames = max(worst, err), frames + len(ours)
        for options in (vad.VadOptions(), vad.TRANSCRIBE_OPTIONS):
            assert vad.speech_timestamps(ours, len(audio), options) == _theirs(silero, theirs, len(audio), options), \
                name
    print(f"\n{len(items)} recordings, {frames} frames: largest probability difference {worst:.2e}")


@pytest.mark.parametrize("seed", range(4))
def test_speech_timestamps_match_silero_rule(silero, seed):
    """Random probability sequences (runs of speech and pauses of every length, some regions far longer than the
    limit) under several option sets: the regions Silero's rule gives, exactly."""
    rng = np.random.default_rng(seed)
    option_sets = [vad.VadOptions(), vad.TRANSCRIBE_OPTIONS,
                   vad.VadOptions(max_speech_duration_s=3.0, min_silence_duration_ms=300, speech_pad_ms=100),
                   vad.VadOptions(threshold=0.6, neg_threshold=0.2, min_speech_duration_ms=500,
                                  max_speech_duration_s=8.0, speech_pad_ms=0),
                   vad.VadOptions(max_speech_duration_s=30.0, min_silence_duration_ms=0, speech_pad_ms=600)]
    for _ in range(25):
        runs = rng.integers(1, 120, size=40)
        levels = rng.choice([0.05, 0.4, 0.55, 0.95], size=40, p=[0.35, 0.15, 0.1, 0.4])
        probs = np.repeat(levels, runs) + rng.uniform(-0.04, 0.04, runs.sum())
        probs = np.clip(probs, 0, 1).astype(np.float32)
        n = len(probs) * vad.FRAME - int(rng.integers(0, vad.FRAME))
        for options in option_sets:
            assert vad.speech_timestamps(probs, n, options) == _theirs(silero, probs, n, options), options


def test_speech_windows():
    assert vad.speech_windows([], 100) == []
    # joined while the span stays within 100 samples, the pauses between kept; a long region split evenly
    regions = [(0, 30), (40, 90), (95, 150), (160, 170), (200, 450)]
    assert vad.speech_windows(regions, 100) == [(0, 90), (95, 170), (200, 283), (283, 366), (366, 450)]


def test_options_are_checked():
    for bad in (dict(threshold=0), dict(threshold=1.2), dict(neg_threshold=0.7), dict(speech_pad_ms=-1),
                dict(min_silence_duration_ms=float("nan")), dict(max_speech_duration_s=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            vad.VadOptions(**bad)
    with pytest.raises(ValueError, match="1-D"):
        vad.speech_probabilities(np.zeros((2, 600), np.float32))
    assert vad.speech_probabilities(np.zeros(0, np.float32)).shape == (0,)


def test_speech_chunks_bounds(jfk_60s):
    """JFK, 38 s of silence, JFK: chunks inside the audio, at most one window each, in order, each within
    Silero's padding of one of the clips (none over the silence)."""
    audio, first_end, second_start = jfk_60s
    content, window = len(audio) // 160, 3000
    chunks = speech_chunks(audio, content, window, vad.TRANSCRIBE_OPTIONS)
    assert all(0 <= c.start < c.end <= content and c.end - c.start <= window for c in chunks), chunks
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:], strict=False)), chunks
    first, second = first_end // 160, second_start // 160
    assert all(c.end <= first + 50 or c.start >= second - 50 for c in chunks), chunks
    assert chunks[0].start < 100 and chunks[-1].end > content - 100, chunks


def test_chunks_without_strides_are_concatenated():
    """Chunks that share no audio are joined as they are, even when one repeats the other's words (an overlap
    search would drop them) and with a gap of silence between them."""
    tok = get_tokenizer("tiny.en")
    tb = tok.timestamp_begin
    said = [tok.encode(" " + w)[0] for w in "we shall go on to the end".split()]
    chunks = [Chunk(0, 1000, 0, 0), Chunk(3000, 4500, 0, 0)]
    for timestamps in (False, True):
        toks = [[tb, *said, tb + 250], [tb + 10, *said, tb + 300]] if timestamps else [said, said]
        ids, segments = stitch(toks, chunks, tok, timestamps=timestamps, duration=45.0)
        assert ids == said + said
        assert [(s["start"], s["end"]) for s in segments] == (
            [(0.0, 5.0), (30.2, 36.0)] if timestamps else [(0.0, 10.0), (30.0, 45.0)])


def test_bad_vad_options(tmp_path):
    from jax_whisper.config import WhisperConfig
    from jax_whisper.transcribe import transcribe

    cfg = WhisperConfig.preset("tiny.en")
    with pytest.raises(ValueError, match="vad must be"):
        transcribe_chunked(None, cfg, np.zeros(10, np.float32), vad="yes")
    with pytest.raises(ValueError, match="word_timestamps"):
        transcribe(None, cfg, np.zeros(10, np.float32), vad=True, word_timestamps=True)
    audio = tmp_path / "a.wav"
    for flags, message in [(["--vad", "--word-timestamps"], "--vad does not go with --word-timestamps"),
                           (["--vad", "--chunked"], "choose one"),
                           (["--vad", "--temperature", "0,0.2"], "--vad does not go with --temperature")]:
        out = subprocess.run([sys.executable, "-m", "jax_whisper", "transcribe", str(audio), "--model", "x", *flags],
                             capture_output=True, text=True)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_tiny_en_skips_silence_and_keeps_the_speech(tiny, jfk_60s):
    """JFK, 38 s of silence, JFK: two chunks, none over the silence; both sentences; and ~95 s of consecutive
    LibriSpeech utterances: WER within 1.5 points of the sequential path's."""
    from jax_whisper.benchmark import long_speech
    from jax_whisper.scoring import word_error_rate
    from jax_whisper.transcribe import transcribe

    if not (SPEECH / "manifest.jsonl").is_file():
        pytest.skip(f"no speech_eval manifest at {SPEECH}")
    audio, first_end, second_start = jfk_60s
    result = transcribe(tiny["jm"], tiny["cfg"], audio, vad=True, chunk_batch_size=4)
    first, gap_end = first_end / 16000, second_start / 16000
    segs = result["segments"]
    assert [s["chunk"] for s in segs] == [0, 1], segs
    assert segs[0]["end"] <= first + 0.5 and segs[1]["start"] >= gap_end - 0.5, segs
    for seg in segs:
        assert "ask not what your country can do for you" in seg["text"].lower(), seg["text"]

    audio, reference = long_speech(SPEECH, 90)
    with_vad = transcribe(tiny["jm"], tiny["cfg"], audio, vad=True, chunk_batch_size=4)
    sequential = transcribe(tiny["jm"], tiny["cfg"], audio)
    wer_vad = word_error_rate([reference], [with_vad["text"]])["wer"]
    wer_sequential = word_error_rate([reference], [sequential["text"]])["wer"]
    print(f"\n{len(audio) / 16000:.1f} s of speech: WER vad {wer_vad:.2f} %, sequential {wer_sequential:.2f} %")
    assert wer_vad <= wer_sequential + 1.5
    assert with_vad["text"] == "".join(s["text"] for s in with_vad["segments"])
