"""Word-level timestamps from cross-attention, as openai-whisper computes them (``whisper/timing.py``).

Given the cross-attention logits of the alignment heads for a window's tokens (``<|sot|>... <|notimestamps|> text
<|eot|>``), each head's attention over the audio frames is normalised per frame across tokens, median-filtered
along time, averaged over heads, and a dynamic-time-warping path through ``-attention`` assigns every text token a
span of encoder frames (20 ms each). Tokens are grouped into words (split at spaces, or at Unicode characters for
languages written without spaces), and punctuation merges into its neighbouring word.

This module holds the post-processing (numpy, no jax): :func:`median_filter`, :func:`dtw`,
:func:`split_to_word_tokens`, :func:`word_alignment`, :func:`merge_punctuations`. Each follows openai-whisper's
rules exactly, ties included (tested against it in ``parity_tests/test_timing.py``).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import numpy as np

TOKENS_PER_SECOND = 50  # encoder frames per second: 16 kHz / 160-sample hop / stride 2
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


@dataclass
class WordTiming:
    word: str
    tokens: list[int] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    probability: float = 0.0


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a window of odd ``width`` along the last axis, the ends reflected (not repeated); an axis not
    longer than ``width // 2`` is returned as it is."""
    if width <= 0 or width % 2 == 0:
        raise ValueError(f"median filter width must be a positive odd number, got {width}")
    half = width // 2
    if x.shape[-1] <= half:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, half)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.median(windows, axis=-1).astype(x.dtype, copy=False)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through ``cost`` (N, M) from (0, 0) to (N-1, M-1), moving diagonally, down or
    right: ``(rows, columns)`` of its cells in order.

    Accumulated costs are kept in float32 and ties resolved as openai-whisper's ``dtw_cpu`` resolves them (a
    diagonal step only if strictly cheapest, then down only if strictly cheapest, else right), so both return the
    same path. Cells on one anti-diagonal depend only on the two before it, so each diagonal is one array op.
    """
    cost = np.asarray(cost, np.float64)
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf, np.float32)
    acc[0, 0] = 0.0
    trace = np.full((n + 1, m + 1), -1, np.int8)
    for d in range(2, n + m + 1):  # i + j == d, 1 <= i <= n, 1 <= j <= m
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
        diag = (c0 < c1) & (c0 < c2)
        down = ~diag & (c1 < c0) & (c1 < c2)
        best = np.where(diag, c0, np.where(down, c1, c2))
        acc[i, j] = (cost[i - 1, j - 1] + best.astype(np.float64)).astype(np.float32)
        trace[i, j] = np.where(diag, 0, np.where(down, 1, 2))
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def split_to_word_tokens(tokenizer, tokens: list[int], language: str | None = None
                         ) -> tuple[list[str], list[list[int]]]:
    """Words and their tokens: at Unicode character boundaries for languages written without spaces, else at
    spaces, with punctuation and special tokens as words of their own (openai-whisper's
    ``Tokenizer.split_to_word_tokens``)."""
    subwords, subword_tokens = _split_on_unicode(tokenizer, tokens)
    if (language or tokenizer.language) in UNSPACED_LANGUAGES:
        return subwords, subword_tokens
    words: list[str] = []
    word_tokens: list[list[int]] = []
    for sub, toks in zip(subwords, subword_tokens, strict=True):
        if not words or toks[0] >= tokenizer.eot or sub.startswith(" ") or sub.strip() in string.punctuation:
            words.append(sub)
            word_tokens.append(list(toks))
        else:
            words[-1] += sub
            word_tokens[-1].extend(toks)
    return words, word_tokens


def _split_on_unicode(tokenizer, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
    """Cut ``tokens`` wherever the text decoded so far ends in a whole character (a token may hold part of a
    multi-byte UTF-8 character, decoded as U+FFFD until the rest arrives)."""
    full = tokenizer.decode_with_timestamps(tokens)
    words, word_tokens, current, offset = [], [], [], 0
    for t in tokens:
        current.append(t)
        text = tokenizer.decode_with_timestamps(current)
        if "\ufffd" not in text or full[offset + text.index("\ufffd")] == "\ufffd":
            words.append(text)
            word_tokens.append(current)
            current, offset = [], offset + len(text)
    return words, word_tokens


def word_alignment(qk: np.ndarray, num_frames: int, text_tokens: list[int], token_probs, tokenizer, *,
                   sot_length: int, medfilt_width: int = 7, qk_scale: float = 1.0,
                   language: str | None = None) -> list[WordTiming]:
    """Words of ``text_tokens`` with start and end times (seconds from the window's start) and probabilities.

    ``qk``: the alignment heads' cross-attention logits (heads, tokens, audio frames) for the sequence
    ``sot_sequence + <|notimestamps|> + text_tokens + <|eot|>``; ``num_frames``: the window's mel frames that
    hold audio (the attention beyond ``num_frames // 2`` encoder frames is ignored); ``token_probs``: each text
    token's probability; ``sot_length``: ``len(sot_sequence)``.
    """
    if not text_tokens:
        return []
    weights = np.asarray(qk, np.float32)[:, :, : num_frames // 2] * np.float32(qk_scale)
    weights = np.exp(weights - weights.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    weights = (weights - weights.mean(-2, keepdims=True)) / weights.std(-2, keepdims=True)
    matrix = median_filter(weights, medfilt_width).mean(0)[sot_length:-1]
    rows, cols = dtw(-matrix)
    words, word_tokens = split_to_word_tokens(tokenizer, [*text_tokens, tokenizer.eot], language)
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
    jump_times = cols[jumps] / TOKENS_PER_SECOND
    probs = list(token_probs)
    return [WordTiming(w, t, float(jump_times[i]), float(jump_times[j]), float(np.mean(probs[i:j])))
            for w, t, i, j in zip(words, word_tokens, boundaries[:-1], boundaries[1:], strict=False)]


def merge_punctuations(alignment: list[WordTiming], prepended: str = PREPEND_PUNCTUATIONS,
                       appended: str = APPEND_PUNCTUATIONS) -> None:
    """In place: a word that is only a ``prepended`` mark (after a space) joins the next word, one that is only an
    ``appended`` mark joins the previous word; the emptied words stay, with no text and no tokens."""
    j = len(alignment) - 1
    for i in range(len(alignment) - 2, -1, -1):
        prev, nxt = alignment[i], alignment[j]
        if prev.word.startswith(" ") and prev.word.strip() in prepended:
            nxt.word, nxt.tokens = prev.word + nxt.word, prev.tokens + nxt.tokens
            prev.word, prev.tokens = "", []
        else:
            j = i
    i = 0
    for j in range(1, len(alignment)):
        prev, nxt = alignment[i], alignment[j]
        if not prev.word.endswith(" ") and nxt.word in appended:
            prev.word, prev.tokens = prev.word + nxt.word, prev.tokens + nxt.tokens
            nxt.word, nxt.tokens = "", []
        else:
            i = j


SENTENCE_END_MARKS = ".。!！?？"


def add_word_timestamps(segments: list[dict], alignment: list[WordTiming], *, eot: int, time_offset: float,
                        last_speech_timestamp: float, prepended: str = PREPEND_PUNCTUATIONS,
                        appended: str = APPEND_PUNCTUATIONS) -> None:
    """In place: give each of a window's ``segments`` its ``words`` from ``alignment`` (:func:`word_alignment` of
    their text tokens, those below ``eot``, in order) and move segment bounds to them, with openai-whisper's clamps.

    Words longer than twice the median word duration (the median capped at 0.7 s) are cut at sentence ends, and
    the first words after a pause; a segment keeps its own start (end) when its first (last) word overshoots it
    by more than 0.5 s, else takes the word's. Times are rounded to 10 ms, as openai-whisper's.
    """
    durations = np.array([w.end - w.start for w in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = 2 * median
    if len(durations):
        for prev, w in zip(alignment, alignment[1:], strict=False):
            if w.end - w.start > longest:
                if w.word in SENTENCE_END_MARKS:
                    w.end = w.start + longest
                elif prev.word in SENTENCE_END_MARKS:
                    w.start = w.end - longest
    merge_punctuations(alignment, prepended, appended)
    timings = iter(alignment)
    for segment in segments:
        n_text = sum(1 for t in segment["tokens"] if t < eot)
        words, taken = [], 0
        while taken < n_text and (timing := next(timings, None)) is not None:
            if timing.word:
                words.append({"word": timing.word, "start": round(time_offset + timing.start, 2),
                              "end": round(time_offset + timing.end, 2), "probability": timing.probability})
            taken += len(timing.tokens)
        if words:
            first, last = words[0], words[-1]
            # the first word after a pause, or the first two, too long: shorten them from the front
            if first["end"] - last_speech_timestamp > 4 * median and (
                    first["end"] - first["start"] > longest
                    or len(words) > 1 and words[1]["end"] - first["start"] > 2 * longest):
                if len(words) > 1 and words[1]["end"] - words[1]["start"] > longest:
                    boundary = max(words[1]["end"] / 2, words[1]["end"] - longest)
                    first["end"] = words[1]["start"] = boundary
                first["start"] = max(0, first["end"] - longest)
            if segment["start"] < first["end"] and segment["start"] - 0.5 > first["start"]:
                first["start"] = max(0, min(first["end"] - median, segment["start"]))
            else:
                segment["start"] = first["start"]
            if segment["end"] > last["start"] and segment["end"] + 0.5 < last["end"]:
                last["end"] = max(last["start"] + median, segment["end"])
            else:
                segment["end"] = last["end"]
            last_speech_timestamp = segment["end"]
        segment["words"] = words


def last_word_end(segments: list[dict]) -> float | None:
    """The end of the last word of ``segments``, else the last segment's end (None without segments)."""
    ends = (w["end"] for s in reversed(segments) for w in reversed(s.get("words", [])))
    return next(ends, segments[-1]["end"] if segments else None)


def _word_anomaly(word: dict) -> float:
    probability, duration = word.get("probability", 0.0), word["end"] - word["start"]
    return (float(probability < 0.15) + max(0.0, 0.133 - duration) * 15 + max(0.0, duration - 2.0))


def is_segment_anomaly(segment: dict | None) -> bool:
    """openai-whisper's hallucination test: among a segment's first 8 words (punctuation aside), improbable
    (p < 0.15), very short (< 0.133 s) or very long (> 2 s) words score; 3 points, or nearly one per word, flag it."""
    if segment is None or not segment.get("words"):
        return False
    words = [w for w in segment["words"] if w["word"] not in PREPEND_PUNCTUATIONS + APPEND_PUNCTUATIONS][:8]
    score = sum(map(_word_anomaly, words))
    return score >= 3 or score + 0.01 >= len(words)


__all__ = ["APPEND_PUNCTUATIONS", "PREPEND_PUNCTUATIONS", "TOKENS_PER_SECOND", "WordTiming", "add_word_timestamps",
           "dtw", "is_segment_anomaly", "last_word_end", "median_filter", "merge_punctuations",
           "split_to_word_tokens", "word_alignment"]
