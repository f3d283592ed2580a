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


__all__ = ["APPEND_PUNCTUATIONS", "PREPEND_PUNCTUATIONS", "TOKENS_PER_SECOND", "WordTiming", "dtw",
           "median_filter", "merge_punctuations", "split_to_word_tokens", "word_alignment"]
