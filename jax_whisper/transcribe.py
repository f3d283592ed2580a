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
    decode_features,
    detect_language,
    embed_audio,
    prepare,
)
from jax_whisper.tokenizer import Tokenizer, get_tokenizer, normalize_language

FRAMES_PER_TOKEN = round(TIME_PRECISION * SAMPLE_RATE / HOP_LENGTH)  # 2: the conv stem's stride


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
                 language: str | None, initial_prompt_tokens: list[int], pad_with_silence: bool = False):
        self.mel, self.content_frames, self.n_frames = mel, content_frames, n_frames
        self.pad_with_silence = pad_with_silence
        self.tokenizer, self.language = tokenizer, language
        self.seek = 0
        self.n_initial = len(initial_prompt_tokens)
        self.all_tokens = list(initial_prompt_tokens)
        self.prompt_reset_since = 0
        self.segments: list[dict[str, Any]] = []

    @property
    def done(self) -> bool:
        return self.seek >= self.content_frames

    def window(self) -> tuple[np.ndarray, list[int], int]:
        """(mel window zero-padded to the full width, prompt tokens, frames of real content).

        openai-whisper pads a short window with zeros in the log-mel domain; with ``pad_with_silence`` the window
        is padded as training pads a batch, with the log-mel of silence (``_mel`` appended a window of it)."""
        size = min(self.n_frames, self.content_frames - self.seek)
        if self.pad_with_silence:
            mel = self.mel[:, self.seek: self.seek + self.n_frames].copy()
        else:
            mel = np.zeros((self.mel.shape[0], self.n_frames), np.float32)
            mel[:, :size] = self.mel[:, self.seek: self.seek + size]
        return mel, self.all_tokens[self.prompt_reset_since:], size

    def advance(self, result: DecodingResult, size: int, s: _Settings) -> None:
        tok = self.tokenizer
        if s.no_speech_threshold is not None and result.no_speech_prob > s.no_speech_threshold and not (
                s.logprob_threshold is not None and result.avg_logprob > s.logprob_threshold):
            self.seek += size  # silence: skip the window
            return
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
        for seg in new:  # an instantaneous or textless segment is kept, emptied
            if seg["start"] == seg["end"] or not seg["text"].strip():
                seg["text"], seg["tokens"] = "", []
        for seg in new:
            seg["id"] = len(self.segments)
            self.segments.append(seg)
            self.all_tokens += seg["tokens"]
        if not s.condition_on_previous_text or result.temperature > 0.5:
            self.prompt_reset_since = len(self.all_tokens)  # a high temperature's text is no good prompt

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
                    initial_prompt: str | None = None, seed: int = 0) -> Iterator[dict[str, Any] | Exception]:
    """Transcribe many files (paths or 16 kHz mono float arrays), ``batch_size`` of them in lockstep.

    Yields, in input order, each file's :func:`transcribe` result, or the exception that loading it raised
    (unreadable, empty or corrupt files), so one bad file does not stop the others. A model of the seed
    vocabulary (no timestamp tokens; trained from scratch here) decodes as it was trained: with
    ``<|notimestamps|>``, without previous-text prompts, window after window, a short window padded with the
    log-mel of silence (as the training batches are), not with openai-whisper's zeros.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
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
    return _transcribe_stream(model, cfg, audios, settings, base, batch_size=batch_size,
                              language=None if english_only else language, english_only=english_only,
                              trained_here=trained_here, initial_prompt=initial_prompt, seed=seed)


def _transcribe_stream(model, cfg: WhisperConfig, audios: Iterable, settings: _Settings, base: Tokenizer, *,
                       batch_size: int, language: str | None, english_only: bool, trained_here: bool,
                       initial_prompt: str | None, seed: int) -> Iterator[dict[str, Any] | Exception]:
    """The window loop of :func:`transcribe_many`, once its arguments have been checked."""
    window = cfg.n_frames
    key = jax.random.key(seed)

    pending = iter(enumerate(audios))
    active: list[tuple[int, _Stream]] = []
    finished: dict[int, dict[str, Any] | Exception] = {}
    next_out, exhausted, rounds = 0, False, 0
    while True:
        fresh: list[tuple[int, _Stream]] = []
        while len(active) + len(fresh) < batch_size and not exhausted:
            try:
                index, audio = next(pending)
            except StopIteration:
                exhausted = True
                break
            audio_in = audio
            try:
                audio = load_audio(audio) if isinstance(audio, str | os.PathLike) else np.asarray(audio, np.float32)
                if audio.ndim != 1:
                    raise ValueError(f"audio must be 1-D 16 kHz samples, got shape {audio.shape}")
                if not np.isfinite(audio).all():  # NaN would decode to garbage tokens, not fail
                    bad = int(np.count_nonzero(~np.isfinite(audio)))
                    raise ValueError(f"{_name(audio_in)}: {bad} of {audio.size} samples are NaN or infinite")
                mel, frames = _mel(audio, cfg.n_mels, window * HOP_LENGTH)
            except Exception as e:  # noqa: BLE001 - reported per file
                finished[index] = e
                continue
            lang = None if english_only else language
            tok = dataclasses.replace(base, language=lang or "en") if not english_only else base
            prompt = tok.encode(" " + initial_prompt.strip()) if initial_prompt else []
            fresh.append((index, _Stream(mel, frames, window, tok, "en" if english_only else lang, prompt,
                                         pad_with_silence=trained_here)))
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
        active = _retire(active, finished)  # their places are refilled before the next round


def _name(audio) -> str:
    return repr(os.fspath(audio)) if isinstance(audio, str | os.PathLike) else "audio array"


def _retire(active: list[tuple[int, _Stream]], finished: dict) -> list[tuple[int, _Stream]]:
    """Move the results of the streams that are done into ``finished``; return the others."""
    for index, st in active:
        if st.done:
            finished[index] = st.result()
    return [a for a in active if not a[1].done]


def transcribe(model, cfg: WhisperConfig, audio: str | os.PathLike | np.ndarray, *, beam_size: int | None = None,
               temperature: float | Sequence[float] = 0.0, language: str | None = "en",
               without_timestamps: bool = False, **kwargs) -> dict[str, Any]:
    """Transcribe one file or 16 kHz mono float array of any length, as openai-whisper's ``transcribe``.

    Returns ``{"text", "segments": [{"id", "seek", "start", "end", "text", "tokens", "temperature",
    "avg_logprob", "compression_ratio", "no_speech_prob"}], "language"}``. ``temperature`` may be a tuple: the
    fallback sequence (openai-whisper's default is ``(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)``). ``language=None``
    detects it (multilingual models). Other keyword arguments: see :func:`transcribe_many` (thresholds,
    ``condition_on_previous_text``, ``initial_prompt``, ``best_of``, ``patience``, ``length_penalty``, ...).
    Loading errors raise (FileNotFoundError, ValueError naming the file).
    """
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


def to_srt(segments: Iterable[dict[str, Any]]) -> str:
    cues = [s for s in segments if s["text"].strip()]
    return "".join(f"{i}\n{format_timestamp(s['start'], ',', True)} --> {format_timestamp(s['end'], ',', True)}\n"
                   f"{s['text'].strip()}\n\n" for i, s in enumerate(cues, 1))


def to_vtt(segments: Iterable[dict[str, Any]]) -> str:
    cues = [s for s in segments if s["text"].strip()]
    return "WEBVTT\n\n" + "".join(f"{format_timestamp(s['start'])} --> {format_timestamp(s['end'])}\n"
                                  f"{s['text'].strip()}\n\n" for s in cues)


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


OUTPUT_FORMATS = {"txt": lambda r: to_txt(r["segments"]), "json": to_json, "srt": lambda r: to_srt(r["segments"]),
                  "vtt": lambda r: to_vtt(r["segments"]), "tsv": lambda r: to_tsv(r["segments"])}


def write_outputs(result: dict[str, Any], stem: str | os.PathLike, formats: Iterable[str]) -> list[Path]:
    """Write ``result`` as ``<stem>.<format>`` for each of ``formats`` (``OUTPUT_FORMATS``), each atomically (a
    temporary sibling renamed into place), so a reader never sees half a file; returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(OUTPUT_FORMATS[fmt](result))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        written.append(path)
    return written


__all__ = ["OUTPUT_FORMATS", "format_timestamp", "to_json", "to_srt", "to_tsv", "to_txt", "to_vtt", "transcribe",
           "transcribe_many", "write_outputs"]
