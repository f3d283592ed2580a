"""Batched chunked long-form transcription: whisper-jax's / the Hugging Face ASR pipeline's algorithm.

:func:`jax_whisper.transcribe.transcribe` walks a file window by window, each window starting where the previous
one's last timestamp ended, so one file is sequential. Here the windows are fixed in advance instead: the audio is
cut into chunks of ``chunk_length_s`` that overlap their neighbours by a stride on each side (a chunk starts every
``chunk_length_s - 2 * stride_length_s`` seconds), every chunk is decoded independently (greedy or beam search,
temperature 0, no previous-text prompt), ``chunk_batch_size`` chunks at a time, and the transcripts are stitched.

Stitching. Two neighbouring chunks both transcribe the ``2 * stride`` seconds they share. The text tokens of the
previous chunk's remainder and of the next chunk are slid against each other; every relative offset is scored by
its position-wise equal tokens divided by the offset's span (from the next chunk's first token to the previous
chunk's last), plus a tiny bonus per position that prefers longer overlaps among equals; at least two tokens must
agree. At the best offset both sides are cut in the middle of their aligned stretch, so each keeps the half of the
shared audio nearer its own centre, where a chunk hears the most context. This is the longest-common-sequence rule
of the Hugging Face pipeline (``_find_longest_common_sequence``), written anew. When no offset has two agreeing
tokens (e.g. the shared audio is silent, or the chunks heard it differently) the sides are concatenated, or, with
timestamps, cut by time: the previous chunk keeps its segments whose middle lies before the middle of the overlap,
the next chunk those whose middle lies after that, or after the end of the previous chunk's kept text if that is
earlier (a chunk's transcript often stops with its last complete segment, seconds before the chunk ends: what it
left out is the next chunk's to say; measured on 10 minutes of speech_eval, the middle rule alone lost 50 words).

Timestamps. A chunk's timestamp tokens are shifted by its start time; its segments are its timestamp pairs (an
unfinished last segment runs to the chunk's end). A merged segment keeps its chunk's times; where the cut falls
inside a segment of either chunk, the two halves around the cut become one segment from the earlier half's start
to the later half's end. Times are then made non-decreasing and clipped to the audio.

Without timestamps (``without_timestamps=True``, and always for the ``seed`` vocabulary, which has no timestamp
tokens) each chunk gives one segment of the tokens it kept, timed by the part of the audio that belongs to the
chunk alone: from the middle of its overlap with the previous chunk to the middle of the next (the first from 0,
the last to the end of the audio).

Frontend. The log-mel is computed once for the whole file as the sequential path does
(:func:`jax_whisper.transcribe._mel`: one dynamic-range clamp per file, silence appended) and each chunk is a
slice of it, so a chunk sees the very frames a sequential window at the same place would. A window shorter than
the model's is padded as the sequential path pads: with zeros in the log-mel domain (openai-whisper), or, for the
seed vocabulary, with the log-mel of silence (as training batches are padded).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from jax_whisper.audio import HOP_LENGTH, SAMPLE_RATE
from jax_whisper.config import WhisperConfig
from jax_whisper.decoding import (
    TIME_PRECISION,
    DecodingOptions,
    DecodingResult,
    decode_features,
    detect_language,
    embed_audio,
    prepare,
)
from jax_whisper.tokenizer import Tokenizer, get_tokenizer, normalize_language
from jax_whisper.transcribe import _batch_size, _mel, load_samples, skipped_as_silence
from jax_whisper.vad import TRANSCRIBE_OPTIONS, VadOptions, speech_probabilities, speech_timestamps, speech_windows

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 log-mel frames a second
MIN_AGREEMENT = 2  # tokens that must agree for an offset to count as an overlap
# ... and the share of the offset's span they must make: two chance agreements (" the", ".") across 20-45 tokens
# of unrelated text joined chunks at the wrong place and lost ~40 words of 10 minutes; true overlaps agree on
# 41-100 % of their span there
MIN_AGREEMENT_SHARE = 0.25


class Chunk(NamedTuple):
    """One chunk of the plan, in log-mel frames (10 ms): content ``[start, end)``; the first ``stride_left`` and
    the last ``stride_right`` frames are shared with the neighbouring chunks."""

    start: int
    end: int
    stride_left: int
    stride_right: int

    @property
    def own(self) -> tuple[int, int]:
        """The frames this chunk speaks for, ``[start + stride_left, end - stride_right)``: the chunks' own spans
        tile the audio, each boundary in the middle of two neighbours' overlap."""
        return self.start + self.stride_left, self.end - self.stride_right


def plan_chunks(n_frames: int, chunk_frames: int, stride_frames: int) -> list[Chunk]:
    """Chunks of ``chunk_frames`` covering ``n_frames`` of audio, starting every ``chunk_frames - 2 *
    stride_frames``; the first has no left stride, the last (the first one reaching the end, maybe shorter) no
    right stride. Consecutive chunks' own spans tile ``[0, n_frames)``. No audio, no chunks."""
    step = chunk_frames - 2 * stride_frames
    if step < 1:
        raise ValueError(f"chunk_frames ({chunk_frames}) must exceed twice stride_frames ({stride_frames})")
    chunks: list[Chunk] = []
    start = 0
    while start < n_frames:
        last = start + chunk_frames >= n_frames
        chunks.append(Chunk(start, min(start + chunk_frames, n_frames), stride_frames if chunks else 0,
                            0 if last else stride_frames))
        if last:
            break
        start += step
    return chunks


def find_overlap(left: Sequence[int], right: Sequence[int]) -> tuple[int, int] | None:
    """Where to join ``left`` and ``right``, two transcripts of overlapping audio: ``(keep, skip)`` such that
    ``left[:keep] + right[skip:]`` says the shared part once, or None when no offset has ``MIN_AGREEMENT``
    position-wise equal tokens making ``MIN_AGREEMENT_SHARE`` of its span.

    ``right`` is slid under ``left``: at span ``k`` its first token sits under ``left[len(left) - k]``. An offset
    scores the fraction of its span that agrees, so a suffix of ``left`` matching a prefix of ``right`` wins over a
    match buried inside either, plus ``k / 10000`` so that of two equal fractions the longer overlap wins."""
    a, b = np.asarray(left, np.int64), np.asarray(right, np.int64)
    n_left, n_right = len(a), len(b)
    if not n_left or not n_right:
        return None
    same = a[:, None] == b[None, :]  # same[i, j]: left[i] == right[j]; an offset is a diagonal
    best, cut = 0.0, None
    for k in range(1, n_left + n_right):
        agree = int(np.trace(same, offset=k - n_left))  # pairs (left[n_left - k + j], right[j])
        score = agree / k + k / 10000
        if agree >= MIN_AGREEMENT and agree >= MIN_AGREEMENT_SHARE * k and score > best:
            left_from, right_from = max(0, n_left - k), max(0, k - n_left)
            half = (min(n_left, n_left + n_right - k) - left_from) // 2
            best, cut = score, (left_from + half, right_from + half)
    return cut


class _Piece(NamedTuple):
    start: float  # seconds, absolute
    end: float
    tokens: list[int]  # text tokens only


class _Token(NamedTuple):
    id: int
    chunk: int
    piece: int  # index of its segment in the chunk
    pos: int  # index in that segment's tokens


def chunk_pieces(tokens: Sequence[int], tokenizer: Tokenizer, offset: float, duration: float) -> list[_Piece]:
    """A chunk's decoded tokens as segments with absolute times: text between a timestamp pair (``<|a|> text
    <|b|>``), timestamps shifted by ``offset`` seconds; text without a closing timestamp runs to the chunk's end
    (``offset + duration``); consecutive timestamps with no text between them open no segment. Times are clipped
    to the chunk. Text tokens only in the segments (no timestamps, no specials); a vocabulary without timestamp
    tokens gives one segment for the whole chunk."""
    tb, eot = tokenizer.timestamp_begin, tokenizer.eot
    pieces: list[_Piece] = []
    start, last, text = None, 0.0, []
    for t in tokens:
        if tb is not None and t >= tb:
            time = min((t - tb) * TIME_PRECISION, duration)
            if text:
                pieces.append(_Piece(offset + (last if start is None else start), offset + time, text))
                start, text = None, []
            else:
                start = time
            last = time
        elif t < eot:
            text.append(int(t))
    if text:
        pieces.append(_Piece(offset + (last if start is None else start), offset + duration, text))
    return pieces


def _join(pieces: Sequence[Sequence[_Piece]], chunks: Sequence[Chunk], *, timestamps: bool) -> list[_Token]:
    """Stitch the chunks' pieces into one token stream (see the module docstring): each neighbour pair is joined by
    :func:`find_overlap` over the previous chunk's remainder and the next chunk, or, where that finds nothing, by
    time (``timestamps``) or by concatenation."""
    done: list[_Token] = []
    tail: list[_Token] = []
    for c, chunk_pieces_ in enumerate(pieces):
        new = [_Token(t, c, p, i) for p, piece in enumerate(chunk_pieces_) for i, t in enumerate(piece.tokens)]
        # chunks that share no audio (stride 0: the first, or chunks placed by voice activity) are concatenated
        cut = find_overlap([t.id for t in tail], [t.id for t in new]) if chunks[c].stride_left else None
        if cut is not None:
            done += tail[: cut[0]]
            tail = new[cut[1]:]
            continue
        if timestamps and tail and new and chunks[c].stride_left:
            middle = chunks[c].own[0] / FRAMES_PER_SECOND  # the middle of the overlap with the previous chunk

            def centre(tok: _Token) -> float:
                p = pieces[tok.chunk][tok.piece]
                return (p.start + p.end) / 2

            tail = [t for t in tail if centre(t) < middle]
            # where the previous chunk heard nothing (it stopped before the middle: a window often ends with its
            # last complete segment), the next chunk's segments count from where the previous one's text ended
            heard = max((pieces[t.chunk][t.piece].end for t in tail), default=-np.inf)
            new = [t for t in new if centre(t) >= min(middle, heard)]
        done += tail
        tail = new
    return done + tail


def _segments(tokens: Sequence[_Token], pieces: Sequence[Sequence[_Piece]], chunks: Sequence[Chunk],
              tokenizer: Tokenizer, *, timestamps: bool, duration: float) -> list[dict[str, Any]]:
    """One segment per run of stitched tokens from the same chunk segment (``timestamps``) or the same chunk; with
    timestamps, the two runs around a join that cut a segment are one."""
    runs: list[list[_Token]] = []
    for tok in tokens:
        if runs and runs[-1][-1].chunk == tok.chunk and runs[-1][-1].piece == tok.piece:
            runs[-1].append(tok)
        else:
            runs.append([tok])
    groups: list[list[list[_Token]]] = []
    for run in runs:
        before, after = (groups[-1][-1][-1], run[0]) if groups else (None, None)
        if timestamps and before is not None and before.chunk != after.chunk and (
                before.pos + 1 < len(pieces[before.chunk][before.piece].tokens) or after.pos > 0):
            groups[-1].append(run)  # the join cut a segment: its halves are one
        else:
            groups.append([run])

    segments: list[dict[str, Any]] = []
    floor = 0.0
    for group in groups:
        first, last = group[0][0], group[-1][-1]
        if timestamps:
            start, end = pieces[first.chunk][first.piece].start, pieces[last.chunk][last.piece].end
        else:
            start, end = (f / FRAMES_PER_SECOND for f in chunks[first.chunk].own)
        start = min(max(start, floor), duration)
        end = min(max(end, start), duration)
        floor = end
        ids = [t.id for run in group for t in run]
        segments.append({"id": len(segments), "seek": chunks[first.chunk].start, "start": start, "end": end,
                         "text": tokenizer.decode(ids), "tokens": ids, "chunk": first.chunk})
    return segments


def stitch(tokens: Sequence[Sequence[int]], chunks: Sequence[Chunk], tokenizer: Tokenizer, *, timestamps: bool,
           duration: float) -> tuple[list[int], list[dict[str, Any]]]:
    """Join the decoded tokens of consecutive ``chunks`` (one list per chunk, empty for a silent one) into the text
    tokens of the whole audio and its segments ``{"id", "seek", "start", "end", "text", "tokens", "chunk"}``
    (``chunk``: the index of the chunk the segment starts in); ``duration`` (seconds) bounds the times. With
    ``timestamps`` the chunks' timestamp tokens give the segments; otherwise each chunk gives one."""
    pieces = []
    for chunk, toks in zip(chunks, tokens, strict=True):
        start, end = chunk.start / FRAMES_PER_SECOND, chunk.end / FRAMES_PER_SECOND
        if timestamps:
            pieces.append(chunk_pieces(toks, tokenizer, start, end - start))
        else:
            ids = [int(t) for t in toks if t < tokenizer.eot]
            pieces.append([_Piece(start, end, ids)] if ids else [])
    merged = _join(pieces, chunks, timestamps=timestamps)
    return [t.id for t in merged], _segments(merged, pieces, chunks, tokenizer, timestamps=timestamps,
                                             duration=duration)


def _window(mel: np.ndarray, content: int, chunk: Chunk, n_frames: int, pad_with_silence: bool) -> np.ndarray:
    """Chunk's log-mel window, ``n_frames`` wide: its frames, then zeros (openai-whisper) or the log-mel of silence.
    A chunk that ends the file is sliced as ``transcribe._Stream.window`` slices the window at the same place."""
    size = chunk.end - chunk.start
    if not pad_with_silence:
        out = np.zeros((mel.shape[0], n_frames), np.float32)
        out[:, :size] = mel[:, chunk.start: chunk.end]
        return out
    if chunk.end == content:
        return mel[:, chunk.start: chunk.start + n_frames].copy()
    # a chunk narrower than the window inside the file: silence from the end of the padding (no audio reaches it)
    return np.concatenate([mel[:, chunk.start: chunk.end], mel[:, mel.shape[1] - (n_frames - size):]], axis=1)


def speech_chunks(samples: np.ndarray, content: int, chunk_frames: int, options: VadOptions) -> list[Chunk]:
    """Chunks without strides over the speech of ``samples`` (``content`` log-mel frames): Silero's speech regions
    (``options``: a :class:`jax_whisper.vad.VadOptions`; none longer than a chunk) joined into spans of at most
    ``chunk_frames``; the silence between spans is never decoded."""
    options = dataclasses.replace(options, max_speech_duration_s=min(options.max_speech_duration_s,
                                                                     chunk_frames / FRAMES_PER_SECOND))
    regions = speech_timestamps(speech_probabilities(samples), len(samples), options)
    chunks = []
    for a, b in speech_windows(regions, chunk_frames * HOP_LENGTH):
        start = a // HOP_LENGTH
        end = min(-(-b // HOP_LENGTH), start + chunk_frames, content)
        if end > start:
            chunks.append(Chunk(start, end, 0, 0))
    return chunks


def _frames(seconds: float, name: str) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not np.isfinite(seconds):
        raise ValueError(f"{name} must be a number of seconds, got {seconds!r}")
    return round(seconds * FRAMES_PER_SECOND)


def transcribe_chunked(model, cfg: WhisperConfig, audio: str | os.PathLike | np.ndarray, *,
                       chunk_batch_size: int = 8, chunk_length_s: float | None = None,
                       stride_length_s: float | None = None, language: str | None = "en", task: str = "transcribe",
                       without_timestamps: bool = False, beam_size: int | None = None, patience: float | None = None,
                       length_penalty: float | None = None, suppress_tokens: str | Iterable[int] | None = "-1",
                       suppress_blank: bool = True, max_initial_timestamp: float | None = 1.0,
                       sample_len: int | None = None, no_speech_threshold: float | None = 0.6,
                       logprob_threshold: float | None = -1.0, vad=None) -> dict[str, Any]:
    """Transcribe one file or 16 kHz mono float array by independent overlapping chunks (module docstring).

    ``vad``: a :class:`jax_whisper.vad.VadOptions` (True: ``vad.TRANSCRIBE_OPTIONS``): chunks of at most
    ``chunk_length_s`` placed on the speech Silero VAD finds (:func:`speech_chunks`), without strides, as
    faster-whisper's ``BatchedInferencePipeline`` places them; silence between them is not decoded, and each is
    decoded without timestamps (one segment a chunk) and their texts are concatenated. Timestamped decoding of a
    window packed with speech often ends seconds before the window does, and nothing else hears that speech
    (measured on 10 minutes of speech_eval: WER 21.5 % with timestamps, 12.6 % without; 12.9 % sequential).

    ``chunk_length_s`` defaults to the model's window (30 s for OpenAI's models), ``stride_length_s`` to a sixth
    of it (5 s, as whisper-jax); chunks start every ``chunk_length_s - 2 * stride_length_s``. The decoding is
    greedy, or beam search with ``beam_size``, at temperature 0 with no previous-text prompt (there is no temperature
    fallback). A chunk the model deems silent (``no_speech_prob > no_speech_threshold`` and ``avg_logprob`` not
    above ``logprob_threshold``, as openai-whisper skips a window) contributes nothing. ``language=None`` detects it on
    the first window (multilingual models). A model of the seed vocabulary decodes without timestamps.

    Returns ``{"text", "segments", "language"}`` with the segment keys of
    :func:`jax_whisper.transcribe.transcribe` (``seek`` is the first frame of the segment's chunk; ``tokens``
    are its text tokens, no timestamps). Bad options raise ValueError before any audio is read; loading errors
    raise (FileNotFoundError, ValueError naming the file).
    """
    if isinstance(chunk_batch_size, bool) or not isinstance(chunk_batch_size, int) or chunk_batch_size < 1:
        raise ValueError(f"chunk_batch_size must be a positive int, got {chunk_batch_size!r}")
    window = cfg.n_frames
    chunk_frames = window if chunk_length_s is None else _frames(chunk_length_s, "chunk_length_s")
    if not FRAMES_PER_SECOND <= chunk_frames <= window:
        raise ValueError(f"chunk_length_s must be between 1 and the model's window ({window / FRAMES_PER_SECOND:g}"
                         f" s), got {chunk_length_s!r}")
    stride = chunk_frames // 6 if stride_length_s is None else _frames(stride_length_s, "stride_length_s")
    if not 0 <= 2 * stride < chunk_frames:
        raise ValueError(f"stride_length_s must be >= 0 and less than half of chunk_length_s "
                         f"({chunk_frames / FRAMES_PER_SECOND:g} s), got {stride_length_s!r}")
    if task not in ("transcribe", "translate"):
        raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
    english_only = not cfg.is_multilingual
    if english_only and task != "transcribe":
        raise ValueError(f"task {task!r} needs a multilingual model; this one is English-only")
    if language is not None:
        language = normalize_language(language)
    if english_only and language not in (None, "en"):
        raise ValueError(f"this model is English-only; got language {language!r}")
    base = get_tokenizer(cfg, task=task if cfg.is_multilingual else None)
    seed_vocabulary = base.timestamp_begin is None  # trained here: no timestamps, windows padded with silence
    vad = TRANSCRIBE_OPTIONS if vad is True else vad or None
    if vad is not None and not isinstance(vad, VadOptions):
        raise ValueError(f"vad must be True or a jax_whisper.vad.VadOptions, got {vad!r}")
    timestamps = not (without_timestamps or seed_vocabulary or vad is not None)
    options = DecodingOptions(task=task, language=None if english_only else language, sample_len=sample_len,
                              beam_size=beam_size, patience=patience, length_penalty=length_penalty,
                              suppress_tokens=suppress_tokens, suppress_blank=suppress_blank,
                              without_timestamps=not timestamps, max_initial_timestamp=max_initial_timestamp)

    samples = load_samples(audio)
    mel, content = _mel(samples, cfg.n_mels, window * HOP_LENGTH)
    if vad is None:
        chunks = plan_chunks(content, chunk_frames, stride)
    else:
        chunks = speech_chunks(samples, content, chunk_frames, vad)
    if english_only:
        language = "en"
    if not chunks:
        return {"text": "", "segments": [], "language": language}
    model = prepare(model)
    if language is None:  # as openai-whisper: on the first window of the padded log-mel
        language = detect_language(model, embed_audio(model, mel[None, :, :window]), base)[0][0]
    tokenizer = base if english_only else dataclasses.replace(base, language=language)

    results: list[DecodingResult] = []
    for i in range(0, len(chunks), chunk_batch_size):
        batch = chunks[i: i + chunk_batch_size]
        mels = [_window(mel, content, c, window, seed_vocabulary) for c in batch]
        width = _batch_size(len(batch), chunk_batch_size)  # few shapes to compile: a power of two
        features = embed_audio(model, np.stack(mels + [mels[0]] * (width - len(batch))))
        out = decode_features(model, features, options, languages=[None if english_only else language] * width)
        results += out[: len(batch)]

    ids, segments = stitch([[] if skipped_as_silence(r, no_speech_threshold, logprob_threshold) else r.tokens
                            for r in results], chunks, tokenizer,
                           timestamps=timestamps, duration=len(samples) / SAMPLE_RATE)
    for seg in segments:  # the decoding statistics of the chunk the segment starts in
        r = results[seg["chunk"]]
        seg.update(temperature=r.temperature, avg_logprob=r.avg_logprob, compression_ratio=r.compression_ratio,
                   no_speech_prob=r.no_speech_prob)
    return {"text": tokenizer.decode(ids), "segments": segments, "language": language}


__all__ = ["Chunk", "chunk_pieces", "find_overlap", "plan_chunks", "speech_chunks", "stitch", "transcribe_chunked"]
