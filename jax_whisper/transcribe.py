"""Long-form transcription: openai-whisper's ``transcribe()`` loop over 30 s windows, several files in lockstep.

Each file moves through its audio as openai-whisper does: decode the window at ``seek`` (with temperature
fallback), cut the tokens into segments at timestamp pairs, and seek to the last complete segment's end (or past
the window when it ends in a lone timestamp or has none); a window the model deems silent is skipped; the text so
far is the next window's ``<|startofprev|>`` prompt unless ``condition_on_previous_text`` is off or the window
needed a temperature above 0.5. Because the next window depends on the previous one, one file is sequential; the
batch is over files: every round decodes the current window of up to ``batch_size`` files at once (each row with
its own prompt), and a finished file's place goes to the next one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_whisper.audio import HOP_LENGTH, SAMPLE_RATE, load_audio, log_mel_spectrogram
from jax_whisper.config import WhisperConfig
from jax_whisper.decoding import (
    TIME_PRECISION,
    DecodingOptions,
    DecodingResult,
    alignment_attention,
    decode_features,
    detect_language,
    embed_audio,
    prepare,
)
from jax_whisper.timing import (
    APPEND_PUNCTUATIONS,
    PREPEND_PUNCTUATIONS,
    add_word_timestamps,
    is_segment_anomaly,
    last_word_end,
    word_alignment,
)
from jax_whisper.tokenizer import Tokenizer, get_tokenizer, normalize_language

FRAMES_PER_TOKEN = round(TIME_PRECISION * SAMPLE_RATE / HOP_LENGTH)  # 2: the conv stem's stride
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames


@dataclasses.dataclass(frozen=True)
class _Settings:
    decode: DecodingOptions  # at temperature 0; temperature, prompt and language are set per window
    best_of: int | None  # samples per window at temperatures > 0 (where beam search is off)
    temperatures: tuple[float, ...]
    compression_ratio_threshold: float | None
    logprob_threshold: float | None
    no_speech_threshold: float | None
    condition_on_previous_text: bool
    initial_prompt: str | None
    word_timestamps: bool = False
    prepend_punctuations: str = PREPEND_PUNCTUATIONS
    append_punctuations: str = APPEND_PUNCTUATIONS
    hallucination_silence_threshold: float | None = None
    clip_timestamps: tuple[float, ...] = ()


@dataclasses.dataclass
class _Window:
    """A decoded window's segments before they are kept (word timestamps may still move them and ``seek``)."""

    segments: list[dict[str, Any]]
    result: DecodingResult
    size: int  # frames of content in the window
    seek: int  # where the window started
    single_ending: bool  # the tokens end in a lone timestamp: nothing is said after it

    @property
    def time_offset(self) -> float:
        return self.seek * HOP_LENGTH / SAMPLE_RATE


@functools.partial(jax.jit, static_argnums=(1,))
def _log_mel(audio: jax.Array, n_mels: int) -> jax.Array:
    return log_mel_spectrogram(audio, n_mels)


def _mel(audio: np.ndarray, n_mels: int, window: int) -> tuple[np.ndarray, int]:
    """Log-mel of the whole file followed by one window of silence, as openai-whisper slices it; returns
    ``(mel, content_frames)``. The silence is extended to a multiple of the window so that files of similar
    length share one compilation: those extra zeros change no frame before the padding and not the max."""
    n = audio.shape[-1]
    total = -(-(n + window) // window) * window
    mel = _log_mel(jnp.asarray(np.pad(audio.astype(np.float32), (0, total - n))), n_mels)
    return np.asarray(mel), n // HOP_LENGTH


class _Stream:
    """One file's position and output in the window loop (the body of openai-whisper's ``transcribe``)."""

    def __init__(self, mel: np.ndarray, content_frames: int, n_frames: int, tokenizer: Tokenizer,
                 language: str | None, initial_prompt_tokens: list[int], pad_with_silence: bool = False,
                 clip_timestamps: Sequence[float] = ()):
        self.mel, self.content_frames, self.n_frames = mel, content_frames, n_frames
        self.pad_with_silence = pad_with_silence
        self.tokenizer, self.language = tokenizer, language
        # the clips to transcribe as (start, end) frames: the last end defaults to the end of the audio
        points = [round(t * FRAMES_PER_SECOND) for t in clip_timestamps] or [0]
        if len(points) % 2:
            points.append(content_frames)
        self.clips = [(a, min(b, content_frames)) for a, b in zip(points[::2], points[1::2], strict=True)]
        self.clip = 0
        self.seek = self.clips[0][0]
        self.n_initial = len(initial_prompt_tokens)
        self.all_tokens = list(initial_prompt_tokens)
        self.prompt_reset_since = 0
        self.segments: list[dict[str, Any]] = []
        self.last_speech_timestamp = 0.0
        self.pending: _Window | None = None
        self._settle()

    def _settle(self) -> None:
        """Move ``seek`` into the current clip, or on to the next clip once it is past this one's end."""
        while self.clip < len(self.clips):
            start, end = self.clips[self.clip]
            self.seek = max(self.seek, start)
            if self.seek < end:
                return
            self.clip += 1
            if self.clip < len(self.clips):
                self.seek = self.clips[self.clip][0]

    @property
    def done(self) -> bool:
        return self.clip >= len(self.clips)

    def window(self) -> tuple[np.ndarray, list[int], int]:
        """(mel window zero-padded to the full width, prompt tokens, frames of real content).

        openai-whisper pads a short window with zeros in the log-mel domain; with ``pad_with_silence`` the window
        is padded as training pads a batch, with the log-mel of silence (``_mel`` appended a window of it)."""
        size = min(self.n_frames, self.content_frames - self.seek, self.clips[self.clip][1] - self.seek)
        if self.pad_with_silence:
            mel = self.mel[:, self.seek: self.seek + self.n_frames].copy()
            if self.seek + size < self.content_frames:  # a clip ends inside the window
                mel[:, size:] = self.mel[:, -1:]
        else:
            mel = np.zeros((self.mel.shape[0], self.n_frames), np.float32)
            mel[:, :size] = self.mel[:, self.seek: self.seek + size]
        return mel, self.all_tokens[self.prompt_reset_since:], size

    def advance(self, result: DecodingResult, size: int, s: _Settings) -> None:
        """Cut the window's tokens into segments at timestamp pairs and move ``seek`` (openai-whisper's rules). The
        segments wait in ``pending`` for :meth:`add_words` (word timestamps) and :meth:`keep`."""
        tok = self.tokenizer
        self.pending = None
        if skipped_as_silence(result, s.no_speech_threshold, s.logprob_threshold):
            self.seek += size  # silence: skip the window
            return
        start_seek = self.seek
        time_offset = self.seek * HOP_LENGTH / SAMPLE_RATE
        tokens = result.tokens
        tb = tok.timestamp_begin
        is_ts = [tb is not None and t >= tb for t in tokens]
        single_ending = is_ts[-2:] == [False, True]
        ends = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]  # between "<a><b>"
        new = []
        if ends:
            if single_ending:
                ends.append(len(tokens))
            last = 0
            for end in ends:
                piece = tokens[last:end]
                new.append(self._segment(time_offset + (piece[0] - tb) * TIME_PRECISION,
                                         time_offset + (piece[-1] - tb) * TIME_PRECISION, piece, result))
                last = end
            if single_ending:
                self.seek += size  # nothing is said after the last timestamp
            else:  # the last segment is unfinished: decode it again from where the last complete one ended
                self.seek += (tokens[last - 1] - tb) * FRAMES_PER_TOKEN
        else:
            duration = size * HOP_LENGTH / SAMPLE_RATE
            stamps = [t for t, ts in zip(tokens, is_ts, strict=True) if ts]
            if stamps and stamps[-1] != tb:  # a lone timestamp marks where the speech ends
                duration = (stamps[-1] - tb) * TIME_PRECISION
            new.append(self._segment(time_offset, time_offset + duration, tokens, result))
            self.seek += size
        self.pending = _Window(new, result, size, start_seek, single_ending)

    def text_tokens(self) -> list[int]:
        """The text tokens of the pending segments, which word timestamps align."""
        if self.pending is None:
            return []
        return [t for seg in self.pending.segments for t in seg["tokens"] if t < self.tokenizer.eot]

    def add_words(self, alignment: list, s: _Settings) -> None:
        """Words into the pending segments (``alignment``: :func:`word_alignment` of :meth:`text_tokens`); then
        openai-whisper's moves: seek to the last word's end unless the window ended in a lone timestamp, and with
        a ``hallucination_silence_threshold`` skip silence around segments that look hallucinated."""
        w = self.pending
        add_word_timestamps(w.segments, alignment, eot=self.tokenizer.eot, time_offset=w.time_offset,
                            last_speech_timestamp=self.last_speech_timestamp, prepended=s.prepend_punctuations,
                            appended=s.append_punctuations)
        end = last_word_end(w.segments)
        if not w.single_ending and end is not None and end > w.time_offset:
            self.seek = round(end * FRAMES_PER_SECOND)
        if s.hallucination_silence_threshold is not None and self._hallucination(s.hallucination_silence_threshold):
            self.pending = None
            return
        end = last_word_end(w.segments)
        if end is not None:
            self.last_speech_timestamp = end

    def _hallucination(self, threshold: float) -> bool:
        """openai-whisper's silence skipping around possible hallucinations: moves ``seek``, may drop the pending
        segments from a suspect one on; True when the whole window is dropped (a suspect first segment after
        more than ``threshold`` seconds of silence: decoding resumes where it starts)."""
        w, segments = self.pending, self.pending.segments
        window_end = (w.seek + self.n_frames) * HOP_LENGTH / SAMPLE_RATE
        if not w.single_ending:
            end = last_word_end(segments)
            if end is not None and end > w.time_offset:
                self.seek = round(end * FRAMES_PER_SECOND) if window_end - end > threshold else w.seek + w.size
        first = next((seg for seg in segments if seg["words"]), None)
        if is_segment_anomaly(first) and first["start"] - w.time_offset > threshold:
            self.seek = w.seek + round((first["start"] - w.time_offset) * FRAMES_PER_SECOND)
            return True
        last_end = self.last_speech_timestamp
        for i, seg in enumerate(segments):
            if not seg["words"]:
                continue
            if is_segment_anomaly(seg):
                nxt = next((x for x in segments[i + 1:] if x["words"]), None)
                next_start = nxt["words"][0]["start"] if nxt else w.time_offset + w.size * HOP_LENGTH / SAMPLE_RATE
                before = (seg["start"] - last_end > threshold or seg["start"] < threshold
                          or seg["start"] - w.time_offset < 2.0)
                after = next_start - seg["end"] > threshold or is_segment_anomaly(nxt) or window_end - seg["end"] < 2.0
                if before and after:
                    self.seek = round(max(w.time_offset + 1, seg["start"]) * FRAMES_PER_SECOND)
                    if self.content_frames * HOP_LENGTH / SAMPLE_RATE - seg["end"] < threshold:
                        self.seek = self.content_frames
                    del segments[i:]
                    break
            last_end = seg["end"]
        return False

    def keep(self, s: _Settings) -> None:
        """Append the pending segments to the transcript (an instantaneous or textless one emptied) and move on."""
        w, self.pending = self.pending, None
        if w is not None:
            for seg in w.segments:
                if seg["start"] == seg["end"] or not seg["text"].strip():
                    seg["text"], seg["tokens"] = "", []
                    if s.word_timestamps:
                        seg["words"] = []
            for seg in w.segments:
                seg["id"] = len(self.segments)
                self.segments.append(seg)
                self.all_tokens += seg["tokens"]
            if not s.condition_on_previous_text or w.result.temperature > 0.5:
                self.prompt_reset_since = len(self.all_tokens)  # a high temperature's text is no good prompt
        self._settle()

    def _segment(self, start: float, end: float, tokens: list[int], r: DecodingResult) -> dict[str, Any]:
        return {"id": 0, "seek": self.seek, "start": start, "end": end,
                "text": self.tokenizer.decode([t for t in tokens if t < self.tokenizer.eot]),
                "tokens": list(tokens), "temperature": r.temperature, "avg_logprob": r.avg_logprob,
                "compression_ratio": r.compression_ratio, "no_speech_prob": r.no_speech_prob}

    def result(self) -> dict[str, Any]:
        tok = self.tokenizer
        limit = tok.timestamp_begin if tok.timestamp_begin is not None else tok.eot
        text = tok.encoding.decode([t for t in self.all_tokens[self.n_initial:] if t < limit and t != tok.eot])
        return {"text": text, "segments": self.segments, "language": self.language}


def skipped_as_silence(r: DecodingResult, no_speech_threshold: float | None, logprob_threshold: float | None) -> bool:
    """openai-whisper's no-speech rule: the window is silence if its no-speech probability is above the threshold,
    unless its average log-probability is above ``logprob_threshold``."""
    return (no_speech_threshold is not None and r.no_speech_prob > no_speech_threshold
            and not (logprob_threshold is not None and r.avg_logprob > logprob_threshold))


def _needs_fallback(r: DecodingResult, s: _Settings) -> bool:
    bad = (s.compression_ratio_threshold is not None and r.compression_ratio > s.compression_ratio_threshold
           or s.logprob_threshold is not None and r.avg_logprob < s.logprob_threshold)
    silent = (s.no_speech_threshold is not None and r.no_speech_prob > s.no_speech_threshold
              and s.logprob_threshold is not None and r.avg_logprob < s.logprob_threshold)
    return bad and not silent


def _batch_size(n: int, cap: int) -> int:
    """Batches are padded to a power of two (at most ``cap``) so that few shapes get compiled."""
    return min(1 << (n - 1).bit_length(), max(cap, n))


def _pad_rows(x: jax.Array, n: int) -> jax.Array:
    return x if x.shape[0] == n else jnp.concatenate([x, jnp.repeat(x[:1], n - x.shape[0], axis=0)])


def _decode_round(model, features: jax.Array, prompts: list[list[int]], languages: list[str | None], s: _Settings,
                  key: jax.Array, cap: int) -> list[DecodingResult]:
    """Decode one window per row with temperature fallback: rows that fail the thresholds are decoded again,
    together, at the next temperature."""
    n = features.shape[0]
    results: list[DecodingResult | None] = [None] * n
    todo = list(range(n))
    for k, t in enumerate(s.temperatures):
        options = s.decode if t == 0 else dataclasses.replace(s.decode, temperature=t, beam_size=None, patience=None,
                                                              best_of=s.best_of)
        width = _batch_size(len(todo), cap)
        rows = todo + [todo[0]] * (width - len(todo))
        sub = features if rows == list(range(n)) else features[jnp.asarray(rows)]
        out = decode_features(model, sub, options, prompts=[prompts[i] for i in rows],
                              languages=[languages[i] for i in rows], key=jax.random.fold_in(key, k))
        for i, r in zip(todo, out, strict=False):
            results[i] = r
        todo = [i for i in todo if _needs_fallback(results[i], s)]
        if not todo:
            break
    return results


def transcribe_many(model, cfg: WhisperConfig, audios: Iterable[str | os.PathLike | np.ndarray], *,
                    batch_size: int = 8, beam_size: int | None = None,
                    temperature: float | Sequence[float] = 0.0, language: str | None = "en",
                    without_timestamps: bool = False, task: str = "transcribe", best_of: int | None = None,
                    patience: float | None = None, length_penalty: float | None = None,
                    suppress_tokens: str | Iterable[int] | None = "-1", suppress_blank: bool = True,
                    max_initial_timestamp: float | None = 1.0, sample_len: int | None = None,
                    compression_ratio_threshold: float | None = 2.4, logprob_threshold: float | None = -1.0,
                    no_speech_threshold: float | None = 0.6, condition_on_previous_text: bool = True,
                    initial_prompt: str | None = None, word_timestamps: bool = False,
                    prepend_punctuations: str = PREPEND_PUNCTUATIONS, append_punctuations: str = APPEND_PUNCTUATIONS,
                    clip_timestamps: str | Sequence[float] | None = None,
                    hallucination_silence_threshold: float | None = None,
                    lookahead: int | None = None, seed: int = 0) -> Iterator[dict[str, Any] | Exception]:
    """Transcribe many files (paths or 16 kHz mono float arrays), ``batch_size`` of them in lockstep.

    Yields, in input order, each file's :func:`transcribe` result, or the exception that loading it raised
    (unreadable, empty or corrupt files), so one bad file does not stop the others. Files are read in groups (a
    group ends once it holds ``lookahead`` files, default ``16 * batch_size``, or that many 30 s windows of audio)
    and started shortest first within a group: a round of lockstep decoding lasts as long as its longest text, so
    files of similar length decode together (the speech_eval corpus: 774 -> 496 decoding steps at batch 8). Each
    file's result does not depend on the order; ``lookahead=1`` keeps the input order. A model of the seed
    vocabulary (no timestamp tokens; trained from scratch here) decodes as it was trained: with
    ``<|notimestamps|>``, without previous-text prompts, window after window, a short window padded with the
    log-mel of silence (as the training batches are), not with openai-whisper's zeros.

    ``word_timestamps``: every segment gets ``words`` ``[{"word", "start", "end", "probability"}]`` from the
    cross-attention of ``model.alignment_heads`` (see :mod:`jax_whisper.timing`), and segment bounds and the
    next window's start follow the words, as openai-whisper's; punctuation in ``prepend_punctuations`` joins the
    next word, in ``append_punctuations`` the previous one. ``hallucination_silence_threshold`` (seconds; needs
    word timestamps): skip silence longer than this around segments whose words look hallucinated.
    ``clip_timestamps``: ``"start,end,start,end,..."`` seconds (or a sequence of numbers) of the clips to
    transcribe; the last end defaults to the end of the audio.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    lookahead = 16 * batch_size if lookahead is None else lookahead
    if not isinstance(lookahead, int) or isinstance(lookahead, bool) or lookahead < 1:
        raise ValueError(f"lookahead must be a positive int, got {lookahead!r}")
    temperatures = (float(temperature),) if isinstance(temperature, int | float) else tuple(map(float, temperature))
    if not temperatures:
        raise ValueError("temperature must be a number or a non-empty sequence of numbers")
    english_only = not cfg.is_multilingual
    if language is not None:
        language = normalize_language(language)  # an unknown one fails here, before any file is read
    if english_only and language is not None and language != "en":
        raise ValueError(f"this model is English-only; got language {language!r}")
    base = get_tokenizer(cfg, task=task if cfg.is_multilingual else None)
    trained_here = base.timestamp_begin is None  # the seed vocabulary: <|notimestamps|> prompts, no previous text
    if trained_here:
        without_timestamps, condition_on_previous_text = True, False
    settings = _Settings(
        decode=DecodingOptions(task=task, language=None if english_only else language, sample_len=sample_len,
                               beam_size=beam_size, patience=patience,
                               length_penalty=length_penalty, suppress_tokens=suppress_tokens,
                               suppress_blank=suppress_blank, without_timestamps=without_timestamps,
                               max_initial_timestamp=max_initial_timestamp, seed=seed),
        best_of=best_of, temperatures=temperatures, compression_ratio_threshold=compression_ratio_threshold,
        logprob_threshold=logprob_threshold, no_speech_threshold=no_speech_threshold,
        condition_on_previous_text=condition_on_previous_text, initial_prompt=initial_prompt)
    if any(t > 0 for t in temperatures):  # fail now, not at the first fallback, if sampling options are invalid
        dataclasses.replace(settings.decode, temperature=max(temperatures), beam_size=None, patience=None,
                            best_of=best_of)
    if any(t < 0 for t in temperatures):
        raise ValueError(f"temperatures must be >= 0, got {temperatures}")
    if hallucination_silence_threshold is not None and not word_timestamps:
        raise ValueError("hallucination_silence_threshold needs word_timestamps (it judges segments by their words)")
    if hallucination_silence_threshold is not None and not hallucination_silence_threshold > 0:
        raise ValueError(f"hallucination_silence_threshold must be a positive number of seconds, "
                         f"got {hallucination_silence_threshold!r}")
    settings = dataclasses.replace(
        settings, word_timestamps=bool(word_timestamps), prepend_punctuations=prepend_punctuations,
        append_punctuations=append_punctuations, hallucination_silence_threshold=hallucination_silence_threshold,
        clip_timestamps=parse_clip_timestamps(clip_timestamps))
    return _transcribe_stream(model, cfg, audios, settings, base, batch_size=batch_size, lookahead=lookahead,
                              language=None if english_only else language, english_only=english_only,
                              trained_here=trained_here, initial_prompt=initial_prompt, seed=seed)


def _shortest_first(audios: Iterable, n_mels: int, window: int, lookahead: int
                    ) -> Iterator[tuple[int, tuple[np.ndarray, int] | Exception]]:
    """``(index, (mel, content_frames))`` of each file, or the exception loading it raised, read in groups of at
    most ``lookahead`` files and ``lookahead`` windows of audio; a group's errors first, then its files shortest
    first (ties in input order)."""
    pending = enumerate(audios)
    while True:
        group, frames = [], 0
        for index, audio in pending:
            try:
                loaded = _mel(load_samples(audio), n_mels, window * HOP_LENGTH)
            except Exception as e:  # noqa: BLE001 - reported per file
                yield index, e
                continue
            group.append((index, loaded))
            frames += loaded[1]
            if len(group) >= lookahead or frames >= lookahead * window:
                break
        if not group:
            return
        yield from sorted(group, key=lambda item: item[1][1])


def _transcribe_stream(model, cfg: WhisperConfig, audios: Iterable, settings: _Settings, base: Tokenizer, *,
                       batch_size: int, lookahead: int, language: str | None, english_only: bool,
                       trained_here: bool, initial_prompt: str | None, seed: int
                       ) -> Iterator[dict[str, Any] | Exception]:
    """The window loop of :func:`transcribe_many`, once its arguments have been checked."""
    window = cfg.n_frames
    key = jax.random.key(seed)

    pending = _shortest_first(audios, cfg.n_mels, window, lookahead)
    active: list[tuple[int, _Stream]] = []
    finished: dict[int, dict[str, Any] | Exception] = {}
    next_out, exhausted, rounds = 0, False, 0
    while True:
        fresh: list[tuple[int, _Stream]] = []
        while len(active) + len(fresh) < batch_size and not exhausted:
            try:
                index, loaded = next(pending)
            except StopIteration:
                exhausted = True
                break
            if isinstance(loaded, Exception):
                finished[index] = loaded
                continue
            mel, frames = loaded
            lang = None if english_only else language
            tok = dataclasses.replace(base, language=lang or "en") if not english_only else base
            prompt = tok.encode(" " + initial_prompt.strip()) if initial_prompt else []
            fresh.append((index, _Stream(mel, frames, window, tok, "en" if english_only else lang, prompt,
                                         pad_with_silence=trained_here, clip_timestamps=settings.clip_timestamps)))
        if fresh and not english_only and language is None:
            # openai-whisper detects the language on the first 30 s of the padded log-mel (silence, not zeros)
            first = np.stack([st.mel[:, :window] for _, st in fresh])
            model = prepare(model)  # split once for every window's jitted calls (and only if there are any)
            codes, _ = detect_language(model, embed_audio(model, first), base)
            for (_, st), code in zip(fresh, codes, strict=True):
                st.language, st.tokenizer = code, dataclasses.replace(base, language=code)
        active = _retire(active + fresh, finished)  # an empty file is done before its first window
        if len(active) < batch_size and not exhausted and fresh:
            continue  # places freed by empty files: refill them before decoding
        while next_out in finished:
            yield finished.pop(next_out)
            next_out += 1
        if not active:
            if exhausted:
                break
            continue

        windows = [st.window() for _, st in active]
        width = _batch_size(len(active), batch_size)
        mels = np.stack([w[0] for w in windows] + [windows[0][0]] * (width - len(windows)))
        model = prepare(model)
        features = embed_audio(model, mels)
        prompts = [w[1] for w in windows] + [windows[0][1]] * (width - len(windows))
        langs = [st.language for _, st in active] + [active[0][1].language] * (width - len(active))
        results = _decode_round(model, features, prompts, langs, settings, jax.random.fold_in(key, rounds),
                                batch_size)
        rounds += 1
        for (_, st), w, r in zip(active, windows, results, strict=False):
            st.advance(r, w[2], settings)
        if settings.word_timestamps:
            _align_words(model, features, [st for _, st in active], [w[2] for w in windows], settings)
        for _, st in active:
            st.keep(settings)
        active = _retire(active, finished)  # their places are refilled before the next round


def _align_words(model, features: jax.Array, streams: list[_Stream], sizes: list[int], s: _Settings) -> None:
    """Word timestamps for every stream's pending segments: one teacher-forced decoder pass over the rows that
    have text (on the round's encoder output), the alignment on the host."""
    rows, sequences = [], []
    for i, st in enumerate(streams):
        text = st.text_tokens()
        if text:
            tok = st.tokenizer
            rows.append(i)
            sequences.append([*tok.sot_sequence, tok.no_timestamps, *text, tok.eot])
        elif st.pending is not None:
            st.add_words([], s)
    if not rows:
        return
    width = _batch_size(len(rows), features.shape[0])
    index = rows + [rows[0]] * (width - len(rows))
    qk, probs = alignment_attention(model, features[jnp.asarray(index)],
                                    sequences + [sequences[0]] * (width - len(rows)), streams[rows[0]].tokenizer.eot)
    for k, i in enumerate(rows):
        st, seq = streams[i], sequences[k]
        n_sot = len(st.tokenizer.sot_sequence)
        text = seq[n_sot + 1: -1]
        alignment = word_alignment(qk[k, :, : len(seq)], sizes[i], text, probs[k, n_sot: n_sot + len(text)],
                                   st.tokenizer, sot_length=n_sot, language=st.language)
        st.add_words(alignment, s)


def parse_clip_timestamps(clips: str | Sequence[float] | None) -> tuple[float, ...]:
    """``"start,end,..."`` seconds (or numbers) as a tuple; each a finite number >= 0. ``"0"`` and None: ()."""
    if clips is None:
        return ()
    try:
        values = tuple(float(t) for t in (clips.split(",") if isinstance(clips, str) else clips) if str(t).strip())
    except (TypeError, ValueError):
        raise ValueError(f"clip_timestamps must be comma-separated seconds start,end,start,..., got {clips!r}"
                         ) from None
    if any(not (np.isfinite(t) and t >= 0) for t in values):
        raise ValueError(f"clip_timestamps must be seconds >= 0, got {clips!r}")
    return () if values == (0.0,) else values


def load_samples(audio: str | os.PathLike | np.ndarray) -> np.ndarray:
    """A file's 16 kHz mono samples (``load_audio``), or an array checked: 1-D and finite (NaN would decode to
    garbage tokens, not fail); ValueError naming the file otherwise."""
    samples = load_audio(audio) if isinstance(audio, str | os.PathLike) else np.asarray(audio, np.float32)
    if samples.ndim != 1:
        raise ValueError(f"{_name(audio)}: audio must be 1-D 16 kHz samples, got shape {samples.shape}")
    if not np.isfinite(samples).all():
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise ValueError(f"{_name(audio)}: {bad} of {samples.size} samples are NaN or infinite")
    return samples


def _name(audio) -> str:
    return repr(os.fspath(audio)) if isinstance(audio, str | os.PathLike) else "audio array"


def _retire(active: list[tuple[int, _Stream]], finished: dict) -> list[tuple[int, _Stream]]:
    """Move the results of the streams that are done into ``finished``; return the others."""
    for index, st in active:
        if st.done:
            finished[index] = st.result()
    return [a for a in active if not a[1].done]


CHUNKED_OPTIONS = frozenset({"task", "patience", "length_penalty", "suppress_tokens", "suppress_blank",
                             "max_initial_timestamp", "sample_len", "no_speech_threshold", "logprob_threshold",
                             "chunk_length_s", "stride_length_s"})  # what transcribe_chunked also takes


def transcribe(model, cfg: WhisperConfig, audio: str | os.PathLike | np.ndarray, *, beam_size: int | None = None,
               temperature: float | Sequence[float] = 0.0, language: str | None = "en",
               without_timestamps: bool = False, chunk_batch_size: int | None = None, vad=False,
               **kwargs) -> dict[str, Any]:
    """Transcribe one file or 16 kHz mono float array of any length, as openai-whisper's ``transcribe``.

    Returns ``{"text", "segments": [{"id", "seek", "start", "end", "text", "tokens", "temperature",
    "avg_logprob", "compression_ratio", "no_speech_prob"[, "words"]}], "language"}``. ``temperature`` may be a
    tuple: the fallback sequence (openai-whisper's default is ``(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)``). ``language=None``
    detects it (multilingual models). Other keyword arguments: see :func:`transcribe_many` (thresholds,
    ``condition_on_previous_text``, ``initial_prompt``, ``best_of``, ``patience``, ``length_penalty``, ...).
    Loading errors raise (FileNotFoundError, ValueError naming the file).

    ``chunk_batch_size=N``: whisper-jax's batched algorithm instead of the sequential one (30 s chunks overlapping
    by 5 s strides, decoded N at a time at temperature 0 without previous-text prompts, stitched;
    :func:`jax_whisper.chunked.transcribe_chunked`); options it cannot honour (word timestamps, a temperature
    fallback, prompts, clips) raise ValueError.

    ``vad=True`` (or a :class:`jax_whisper.vad.VadOptions`): the chunked algorithm (``chunk_batch_size``
    default 8) with its chunks placed on the speech Silero VAD finds instead of at fixed strides, as
    faster-whisper's ``BatchedInferencePipeline``, decoded without timestamps (one segment a chunk); silence between
    them is not decoded.
    """
    if vad and chunk_batch_size is None:
        chunk_batch_size = 8
    if chunk_batch_size is not None:
        from jax_whisper.chunked import transcribe_chunked

        unsupported = sorted(k for k, v in kwargs.items() if k not in CHUNKED_OPTIONS and v not in (None, False))
        # no prompts and no fallback to heed: the chunks are independent, decoded once at temperature 0
        unsupported = [k for k in unsupported if k not in ("condition_on_previous_text", "seed",
                                                            "compression_ratio_threshold")]
        if temperature not in (0, 0.0, (0.0,), [0.0]):
            unsupported.insert(0, "temperature")
        if unsupported:
            raise ValueError(f"{'vad' if vad else 'chunk_batch_size'} (chunked transcription) does not go with "
                             f"{', '.join(unsupported)}: "
                             f"it decodes each chunk once, greedily or by beam search, at temperature 0")
        return transcribe_chunked(model, cfg, audio, chunk_batch_size=chunk_batch_size, beam_size=beam_size,
                                  language=language, without_timestamps=without_timestamps, vad=vad,
                                  **{k: v for k, v in kwargs.items() if k in CHUNKED_OPTIONS})
    (result,) = transcribe_many(model, cfg, [audio], batch_size=1, beam_size=beam_size, temperature=temperature,
                                language=language, without_timestamps=without_timestamps, **kwargs)
    if isinstance(result, Exception):
        raise result
    return result


def format_timestamp(seconds: float, marker: str = ".", always_hours: bool = False) -> str:
    """``[hh:]mm:ss.mmm`` (SRT uses ``,`` and always the hours)."""
    ms = round(max(seconds, 0.0) * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return (f"{h:02d}:" if always_hours or h else "") + f"{m:02d}:{s:02d}{marker}{ms:03d}"


def _word_groups(segments: list[dict[str, Any]], max_line_width: int | None, max_line_count: int | None,
                 max_words_per_line: int | None) -> Iterator[list[dict[str, Any]]]:
    """Words grouped into subtitles as openai-whisper's subtitle writers group them.

    Without both a line width and a line count, each segment's words make cues of at most ``max_words_per_line``
    words; with both, lines fill up to ``max_line_width`` characters and ``max_line_count`` lines make a cue, a
    pause over 3 s starting a new one. Words keep their leading space inside a line; a line break is a newline
    before the word."""
    by_segment = max_line_count is None or max_line_width is None
    width, per_line = max_line_width or 1000, max_words_per_line or 1000
    first = next((w["start"] for s in segments for w in s["words"]), segments[0]["start"] if segments else None)
    last, line_len, n_lines, group = first or 0.0, 0, 1, []
    for segment in segments:
        words = segment["words"]
        for chunk in range(0, len(words), per_line):
            for i, word in enumerate(words[chunk: chunk + per_line]):
                word = dict(word)
                pause = not by_segment and word["start"] - last > 3.0
                new_cue = i == 0 and bool(group) and by_segment
                if line_len > 0 and line_len + len(word["word"]) <= width and not pause and not new_cue:
                    line_len += len(word["word"])
                else:
                    word["word"] = word["word"].strip()
                    if group and max_line_count is not None and (pause or n_lines >= max_line_count) or new_cue:
                        yield group
                        group, n_lines = [], 1
                    elif line_len > 0:
                        n_lines += 1
                        word["word"] = "\n" + word["word"]
                    line_len = len(word["word"].strip())
                group.append(word)
                last = word["start"]
    if group:
        yield group


def _cues(segments: Iterable[dict[str, Any]], timestamp, *, highlight_words: bool = False,
          max_line_width: int | None = None, max_line_count: int | None = None,
          max_words_per_line: int | None = None) -> Iterator[tuple[str, str, str]]:
    """(start, end, text) of each cue: one per segment with text, or, when the segments carry ``words``, the word
    groups of :func:`_word_groups`; ``highlight_words`` repeats a cue once per word with that word underlined."""
    segments = list(segments)
    if not (segments and "words" in segments[0]):
        yield from ((timestamp(s["start"]), timestamp(s["end"]), s["text"].strip()) for s in segments
                    if s["text"].strip())
        return
    for group in _word_groups(segments, max_line_width, max_line_count, max_words_per_line):
        start, end = timestamp(group[0]["start"]), timestamp(group[-1]["end"])
        text = "".join(w["word"] for w in group)
        if not highlight_words:
            yield start, end, text
            continue
        last = start
        for i, word in enumerate(group):
            w_start, w_end = timestamp(word["start"]), timestamp(word["end"])
            if last != w_start:
                yield last, w_start, text
            yield w_start, w_end, "".join(re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", w["word"]) if j == i else w["word"]
                                          for j, w in enumerate(group))
            last = w_end


def to_srt(segments: Iterable[dict[str, Any]], **layout) -> str:
    """SubRip cues; ``layout``: ``highlight_words``, ``max_line_width``, ``max_line_count``, ``max_words_per_line``
    (for segments with words, see :func:`_cues`)."""
    cues = _cues(segments, lambda t: format_timestamp(t, ",", True), **layout)
    return "".join(f"{i}\n{start} --> {end}\n{text}\n\n" for i, (start, end, text) in enumerate(cues, 1))


def to_vtt(segments: Iterable[dict[str, Any]], **layout) -> str:
    """WebVTT cues; ``layout`` as :func:`to_srt`."""
    cues = _cues(segments, format_timestamp, **layout)
    return "WEBVTT\n\n" + "".join(f"{start} --> {end}\n{text}\n\n" for start, end, text in cues)


def to_tsv(segments: Iterable[dict[str, Any]]) -> str:
    """openai-whisper's TSV: a ``start end text`` header, times in integer milliseconds."""
    return "start\tend\ttext\n" + "".join(
        f"{round(1000 * s['start'])}\t{round(1000 * s['end'])}\t{s['text'].strip().replace(chr(9), ' ')}\n"
        for s in segments if s["text"].strip())


def to_txt(segments: Iterable[dict[str, Any]]) -> str:
    """One line per segment, as openai-whisper's ``.txt``."""
    return "".join(s["text"].strip() + "\n" for s in segments if s["text"].strip())


def to_json(result: dict[str, Any]) -> str:
    """``result`` as strict JSON: a non-finite float (an ``avg_logprob`` of -inf, say) becomes ``null``, never
    the bare ``NaN`` / ``Infinity`` that strict parsers reject."""
    def finite(x):
        if isinstance(x, float):
            return x if np.isfinite(x) else None
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [finite(v) for v in x]
        return x.item() if isinstance(x, np.generic) else x

    return json.dumps(finite(result), ensure_ascii=False, allow_nan=False)


OUTPUT_FORMATS = {"txt": lambda r, **_: to_txt(r["segments"]), "json": lambda r, **_: to_json(r),
                  "srt": lambda r, **layout: to_srt(r["segments"], **layout),
                  "vtt": lambda r, **layout: to_vtt(r["segments"], **layout),
                  "tsv": lambda r, **_: to_tsv(r["segments"])}


def write_outputs(result: dict[str, Any], stem: str | os.PathLike, formats: Iterable[str], **layout) -> list[Path]:
    """Write ``result`` as ``<stem>.<format>`` for each of ``formats`` (``OUTPUT_FORMATS``), each atomically (a
    temporary sibling renamed into place), so a reader never sees half a file; returns the paths. ``layout``:
    the subtitle options of :func:`to_srt`."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(OUTPUT_FORMATS[fmt](result, **layout))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        written.append(path)
    return written


__all__ = ["OUTPUT_FORMATS", "format_timestamp", "to_json", "to_srt", "to_tsv", "to_txt", "to_vtt", "transcribe",
           "transcribe_many", "write_outputs"]
