"""The project's one tokenizer, shared by the Flax model and the PyTorch reference.

Three vocabularies, all built offline from the BPE rank files shipped with openai-whisper:

* ``"seed"`` (n_vocab 50262): GPT-2's 50257 tokens (``<|endoftext|>`` = 50256 ends a transcript) plus
  ``<|startoftranscript|>`` 50257, ``<|en|>`` 50258, ``<|transcribe|>`` 50259, ``<|notimestamps|>`` 50260,
  ``<|startofprev|>`` 50261. The project's from-scratch English model.
* ``"gpt2"`` (n_vocab 51864): OpenAI's English-only ``.en`` models.
* ``"multilingual"`` (n_vocab 51865 with 99 languages, 51866 with 100 for large-v3).

For the two OpenAI vocabularies every id equals ``whisper.tokenizer.get_tokenizer(...)``'s.
Importing this module imports neither jax, torch nor the ``whisper`` package (whose ``__init__`` pulls in
torch): the asset directory is located with ``importlib.util.find_spec``, which does not execute it.
"""

from __future__ import annotations

import base64
import importlib.util
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import tiktoken

# Target value the losses ignore (PyTorch's cross_entropy default; the Flax loss masks it explicitly).
IGNORE_ID = -100

VOCABS = ("seed", "gpt2", "multilingual")
TASKS = ("transcribe", "translate")

# Order matters: language token ids are assigned in this order (the first 99 for most models, all 100 for
# large-v3). Same table as openai-whisper's, which the tests check.
LANGUAGES: Mapping[str, str] = MappingProxyType({
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak",
    "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian",
    "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian", "mk": "macedonian",
    "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian", "ne": "nepali",
    "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer",
    "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan",
    "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi", "gu": "gujarati",
    "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek", "fo": "faroese",
    "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk", "mt": "maltese",
    "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala",
    "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
})

# Language names (and a few aliases) -> code, so callers may say "english" or "mandarin".
TO_LANGUAGE_CODE: Mapping[str, str] = MappingProxyType({
    **{name: code for code, name in LANGUAGES.items()},
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb",
    "pushto": "ps", "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si",
    "castilian": "es", "mandarin": "zh",
})

EOT = "<|endoftext|>"
SOT = "<|startoftranscript|>"
SOT_PREV = "<|startofprev|>"
SOT_LM = "<|startoflm|>"
NO_SPEECH = "<|nospeech|>"
NO_TIMESTAMPS = "<|notimestamps|>"
TRANSCRIBE = "<|transcribe|>"
TRANSLATE = "<|translate|>"
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in 20 ms steps
TIME_PRECISION = 0.02  # seconds per timestamp step

# GPT-2's pre-tokenization regex; both Whisper rank files were trained with it.
_PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _timestamp_name(i: int) -> str:
    # Integer arithmetic, so the text never depends on float rounding: i=1 -> "<|0.02|>".
    return f"<|{i // 50}.{2 * (i % 50):02d}|>"


def _special_names(vocab: str, num_languages: int) -> list[str]:
    """Special tokens in id order; they follow the BPE ranks directly."""
    if vocab == "seed":
        return [EOT, SOT, "<|en|>", TRANSCRIBE, NO_TIMESTAMPS, SOT_PREV]
    langs = [f"<|{code}|>" for code in list(LANGUAGES)[:num_languages]]
    return [EOT, SOT, *langs, TRANSLATE, TRANSCRIBE, SOT_LM, SOT_PREV, NO_SPEECH, NO_TIMESTAMPS,
            *(_timestamp_name(i) for i in range(N_TIMESTAMPS))]


def _asset_path(filename: str) -> Path:
    # find_spec locates the package without running whisper/__init__.py (which imports torch).
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("openai-whisper is not installed; its assets/*.tiktoken hold the vocabularies")
    for location in spec.submodule_search_locations:
        path = Path(location) / "assets" / filename
        if path.is_file():
            return path
    where = list(spec.submodule_search_locations)
    raise FileNotFoundError(f"{filename} not found in openai-whisper's assets under {where}")


@lru_cache(maxsize=2)
def _load_ranks(filename: str) -> dict[bytes, int]:
    """Parse a tiktoken rank file: one "<base64 token> <rank>" per line."""
    ranks: dict[bytes, int] = {}
    with open(_asset_path(filename), "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


@cache
def _encoding(vocab: str, num_languages: int) -> tuple[tiktoken.Encoding, Mapping[str, int]]:
    ranks = _load_ranks("multilingual.tiktoken" if vocab == "multilingual" else "gpt2.tiktoken")
    specials = {name: len(ranks) + i for i, name in enumerate(_special_names(vocab, num_languages))}
    enc = tiktoken.Encoding(
        name=f"jax_whisper_{vocab}_{num_languages}",
        pat_str=_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens=specials,
        explicit_n_vocab=len(ranks) + len(specials),  # tiktoken checks the ids are contiguous
    )
    return enc, MappingProxyType(specials)


def normalize_language(language: str) -> str:
    """Language code or name (any case) -> code; ValueError for an unknown one."""
    key = language.lower().strip()
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    raise ValueError(f"unknown language {language!r}; use a code such as 'en' or a name such as 'english'")


@dataclass(frozen=True)
class Tokenizer:
    """Text <-> token ids plus Whisper's special tokens.

    Usually built with :func:`get_tokenizer`. Fields are normalized in ``__post_init__`` the way
    openai-whisper's ``get_tokenizer`` does: English-only (``gpt2``) tokenizers have no language or task
    (``.en`` models are prompted with ``<|startoftranscript|>`` alone); the seed vocabulary is always
    English transcription. A multilingual tokenizer may have ``language=None`` (e.g. for language
    detection): ``dataclasses.replace(tok, language=None)``.
    Frozen and hashable, so it can be a static argument or a cache key.
    """

    vocab: str  # "seed" | "gpt2" | "multilingual"
    num_languages: int = 99
    language: str | None = None
    task: str | None = None

    def __post_init__(self):
        if self.vocab not in VOCABS:
            raise ValueError(f"unknown vocabulary {self.vocab!r}; choose from {VOCABS}")
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose from {TASKS}")
        language = None if self.language is None else normalize_language(self.language)
        task, num_languages = self.task, self.num_languages

        valid_count = isinstance(num_languages, int) and 1 <= num_languages <= len(LANGUAGES)
        if self.vocab != "seed" and not valid_count:
            raise ValueError(f"num_languages must be in [1, {len(LANGUAGES)}], got {num_languages!r}")
        if self.vocab == "multilingual":
            if language is not None and language not in list(LANGUAGES)[:num_languages]:
                raise ValueError(f"language {language!r} is not among this vocabulary's "
                                 f"{num_languages} languages")
        else:
            # English-only vocabularies: asking for another language or for translation is a mistake
            # that would otherwise silently transcribe English.
            if language not in (None, "en"):
                raise ValueError(f"the {self.vocab!r} vocabulary is English-only, got language {language!r}")
            if task not in (None, "transcribe"):
                raise ValueError(f"the {self.vocab!r} vocabulary cannot {task!r}, only 'transcribe'")
            if self.vocab == "gpt2":
                language, task = None, None  # as openai-whisper: .en models get no language/task token
            else:
                language, task, num_languages = "en", "transcribe", 1
        object.__setattr__(self, "language", language)
        object.__setattr__(self, "task", task)
        object.__setattr__(self, "num_languages", num_languages)

    # ---- vocabulary ----

    @property
    def encoding(self) -> tiktoken.Encoding:
        return _encoding(self.vocab, self.num_languages)[0]

    @property
    def special_tokens(self) -> Mapping[str, int]:
        """Special token text -> id (read-only)."""
        return _encoding(self.vocab, self.num_languages)[1]

    @property
    def n_vocab(self) -> int:
        return self.encoding.n_vocab

    @property
    def is_multilingual(self) -> bool:
        return self.vocab == "multilingual"

    def _special(self, name: str) -> int | None:
        return self.special_tokens.get(name)

    @property
    def eot(self) -> int:
        return self.special_tokens[EOT]

    @property
    def sot(self) -> int:
        return self.special_tokens[SOT]

    @property
    def sot_prev(self) -> int:
        return self.special_tokens[SOT_PREV]

    @property
    def sot_lm(self) -> int | None:
        return self._special(SOT_LM)

    @property
    def no_speech(self) -> int | None:
        return self._special(NO_SPEECH)

    @property
    def no_timestamps(self) -> int:
        return self.special_tokens[NO_TIMESTAMPS]

    @property
    def timestamp_begin(self) -> int | None:
        """Id of ``<|0.00|>``; timestamp ``i`` (i * 20 ms) is ``timestamp_begin + i``. None for seed."""
        return self._special(_timestamp_name(0))

    @property
    def transcribe(self) -> int:
        return self.special_tokens[TRANSCRIBE]

    @property
    def translate(self) -> int | None:
        return self._special(TRANSLATE)

    def to_language_token(self, language: str) -> int:
        """Id of ``<|xx|>`` for a language code or name; ValueError if this vocabulary lacks it."""
        code = normalize_language(language)
        token = self.special_tokens.get(f"<|{code}|>")
        if token is None:
            raise ValueError(f"language {language!r} has no token in the {self.vocab!r} vocabulary "
                             f"({self.num_languages} languages)")
        return token

    @property
    def language_token(self) -> int:
        if self.language is None:
            raise ValueError("this tokenizer has no language set")
        return self.to_language_token(self.language)

    @cached_property
    def all_language_codes(self) -> tuple[str, ...]:
        return tuple(code for code in LANGUAGES if f"<|{code}|>" in self.special_tokens)

    @cached_property
    def all_language_tokens(self) -> tuple[int, ...]:
        return tuple(self.special_tokens[f"<|{code}|>"] for code in self.all_language_codes)

    @cached_property
    def sot_sequence(self) -> tuple[int, ...]:
        """The decoder prompt: ``<|startoftranscript|>`` [language] [task]."""
        seq = [self.sot]
        if self.language is not None:
            seq.append(self.language_token)
        if self.task is not None:
            seq.append(self.transcribe if self.task == "transcribe" else self.translate)
        return tuple(seq)

    @cached_property
    def sot_sequence_including_notimestamps(self) -> tuple[int, ...]:
        return (*self.sot_sequence, self.no_timestamps)

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Sorted ids to suppress while decoding so the model cannot emit speaker tags, music notes or
        bracketed annotations that are not speech. Same set as openai-whisper's for its vocabularies.
        """
        enc = self.encoding
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += ["<<", ">>", "<<<", ">>>", "--", "---", "-(", "-[", "('", '("', "((", "))", "(((", ")))",
                    "[[", "]]", "{{", "}}", "♪♪", "♪♪♪"]
        # Musical symbols (U+2669..U+266F) may take several tokens; their first token is suppressed
        # anyway, which is safe because it is the UTF-8 prefix shared by the U+2640..U+267F block.
        music = "♩♪♫♬♭♮♯"
        # " -" and " '" start a word; inside a word ("well-known", "don't") they stay allowed.
        suppress = {enc.encode_ordinary(" -")[0], enc.encode_ordinary(" '")[0]}
        for symbol in symbols + list(music):
            for ids in (enc.encode_ordinary(symbol), enc.encode_ordinary(" " + symbol)):
                if len(ids) == 1 or symbol in music:
                    suppress.add(ids[0])
        return tuple(sorted(suppress))

    # ---- text ----

    def encode(self, text: str) -> list[int]:
        """Text -> ids. Special-token strings in the text (e.g. "<|endoftext|>") are encoded as plain text:
        transcripts are data, and must never inject control tokens.
        """
        return self.encoding.encode_ordinary(text)

    def _check_ids(self, ids: Iterable[int] | np.ndarray) -> list[int]:
        # np.asarray also takes jax/torch arrays (via __array__) without importing either framework.
        arr = np.asarray(ids if hasattr(ids, "__len__") else list(ids))
        if arr.ndim != 1 and arr.size:
            raise ValueError(f"expected a 1-D sequence of token ids, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {arr.dtype}")
        out = [int(t) for t in arr.reshape(-1)]
        bad = [t for t in out if not 0 <= t < self.n_vocab]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.n_vocab}): {bad[:10]}")
        return out

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Ids -> text, dropping every special and timestamp token (all have ids >= eot)."""
        return self.encoding.decode([t for t in self._check_ids(ids) if t < self.eot])

    def decode_with_timestamps(self, ids: Iterable[int] | np.ndarray) -> str:
        """Ids -> text keeping special and timestamp tokens as text, e.g. "<|1.08|>"."""
        return self.encoding.decode(self._check_ids(ids))

    def decode_batch(self, tokens: np.ndarray) -> list[str]:
        """Decoder output rows to text: each row cut at its first ``eot``, special ids (>= eot) dropped, stripped."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (batch, n), got shape {tokens.shape}")
        texts = []
        for row in tokens.tolist():
            if self.eot in row:
                row = row[: row.index(self.eot)]
            texts.append(self.decode([t for t in row if 0 <= t < self.eot]).strip())
        return texts

    # ---- training ----

    def encode_transcript(self, text: str, n_text_ctx: int, *, span: tuple[float, float] | None = None,
                          mask_prompt: bool = False) -> tuple[list[int], list[int]] | None:
        """One training example: ``(tokens, targets)``, or None if it does not fit ``n_text_ctx``.

        ``tokens`` = ``sot_sequence_including_notimestamps`` + the ids of ``" " + text.strip()``
        (Whisper's leading-space convention; empty text adds no ids). ``targets`` = ``tokens`` shifted left
        by one, ending in ``eot``; same length. Never truncates: a cut transcript would teach the model
        to stop mid-sentence, so the caller drops (and counts) the None examples instead.
        With ``span = (start, end)`` seconds the example is Whisper's timestamped form, one segment:
        ``sot_sequence`` + ``<|start|>`` + text + ``<|end|>`` (start rounded down, end up, to 20 ms, so the segment
        covers the speech); ValueError if the vocabulary has no timestamps or the span is outside 0..30 s.
        With ``mask_prompt`` the targets that merely predict the fixed prompt (language, task,
        notimestamps) are ``IGNORE_ID``, so neither the loss nor token accuracy counts them.
        """
        if not (isinstance(n_text_ctx, int) and n_text_ctx > 0):
            raise ValueError(f"n_text_ctx must be a positive int, got {n_text_ctx!r}")
        stripped = text.strip()
        ids = self.encode(" " + stripped) if stripped else []
        if span is None:
            prompt = list(self.sot_sequence_including_notimestamps)
            tokens = prompt + ids
        else:
            prompt = list(self.sot_sequence)
            tokens = prompt + [self.timestamp_token(span[0], math.floor)] + ids + [self.timestamp_token(span[1],
                                                                                                     math.ceil)]
        if len(tokens) > n_text_ctx:
            return None
        targets = tokens[1:] + [self.eot]
        if mask_prompt:
            targets[: len(prompt) - 1] = [IGNORE_ID] * (len(prompt) - 1)
        return tokens, targets

    def timestamp_token(self, seconds: float, rounding: Callable[[float], int] = round) -> int:
        """The id of the timestamp ``seconds`` (20 ms steps, ``rounding`` to a step); ValueError outside 0..30 s
        or in a vocabulary without timestamps (the seed's)."""
        if self.timestamp_begin is None:
            raise ValueError(f"the {self.vocab!r} vocabulary has no timestamp tokens")
        i = int(rounding(round(seconds / TIME_PRECISION, 6)))  # 6 places: 0.06 s is step 3, not 3.0000000000000004
        if not 0 <= i < N_TIMESTAMPS:
            raise ValueError(f"timestamp {seconds!r} s is outside 0..{(N_TIMESTAMPS - 1) * TIME_PRECISION:.2f} s")
        return self.timestamp_begin + i

    def pad_batch(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], length: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Stack ``encode_transcript`` pairs into ``(tokens, targets)``, both int32 of shape (B, length).

        ``tokens`` are right-padded with ``eot`` (a valid embedding index; the decoder is causal, so
        padding never changes the logits at real positions). ``targets`` are right-padded with
        ``IGNORE_ID`` (-100), which the losses skip; the loss mask is ``targets != IGNORE_ID``.
        ``length`` defaults to the longest pair; a longer pair raises ValueError naming its index.
        """
        pairs = list(pairs)
        for i, pair in enumerate(pairs):
            if pair is None:
                raise ValueError(f"batch item {i} is None (a transcript encode_transcript dropped)")
            if len(pair[0]) != len(pair[1]):
                raise ValueError(f"batch item {i}: {len(pair[0])} tokens but {len(pair[1])} targets")
        if length is None:
            if not pairs:
                raise ValueError("empty batch and no length given")
            length = max(len(t) for t, _ in pairs)
        if not (isinstance(length, int) and length > 0):
            raise ValueError(f"length must be a positive int, got {length!r}")
        tokens = np.full((len(pairs), length), self.eot, dtype=np.int32)
        targets = np.full((len(pairs), length), IGNORE_ID, dtype=np.int32)
        for i, (tok, tgt) in enumerate(pairs):
            if len(tok) > length:
                raise ValueError(f"batch item {i} has {len(tok)} tokens, longer than length {length}")
            tokens[i, : len(tok)] = tok
            targets[i, : len(tgt)] = tgt
        return tokens, targets


# Vocabulary names get_tokenizer accepts besides "seed" and the WhisperConfig preset names ("tiny.en", ...).
_NAMES = {"gpt2": "gpt2", "english": "gpt2", "multilingual": "multilingual"}


def _vocab_from_n_vocab(n_vocab: int) -> tuple[str, int]:
    if n_vocab == 50262:
        return "seed", 1
    if n_vocab == 51864:
        return "gpt2", 99
    if 51865 <= n_vocab <= 51765 + 1 + len(LANGUAGES):
        return "multilingual", n_vocab - 51766  # the config's num_languages rule
    raise ValueError(f"no tokenizer has n_vocab={n_vocab}; known: 50262 (seed), 51864 (English-only), "
                     f"51865..{51766 + len(LANGUAGES)} (multilingual)")


def get_tokenizer(name_or_cfg: Any = None, *, multilingual: bool | None = None,
                  num_languages: int | None = None, language: str | None = None,
                  task: str | None = None) -> Tokenizer:
    """Return the (cached) tokenizer for a vocabulary name, a model config, or openai-style flags.

    * ``get_tokenizer("seed")``; also "gpt2"/"english" (English-only), "multilingual", or a preset
      name such as "tiny.en" or "large-v3".
    * ``get_tokenizer(cfg)``: any object with ``n_vocab`` (e.g. ``WhisperConfig``): 50262 -> seed,
      51864 -> English-only, 51865/51866 -> multilingual with 99/100 languages.
    * ``get_tokenizer(multilingual=True, num_languages=100, language="fr", task="translate")``: as
      ``whisper.tokenizer.get_tokenizer``. ``num_languages`` defaults to 99 (or what the config implies).

    Defaults follow openai-whisper: multilingual -> language "en", task "transcribe"; English-only ->
    no language/task tokens. Bad names, languages or tasks raise ValueError.
    """
    fixed = None  # language count fixed by a config / preset / "seed"
    if name_or_cfg is None:
        if multilingual is None:
            raise ValueError("get_tokenizer needs a name ('seed', ...), a config, or multilingual=True/False")
        vocab = "multilingual" if multilingual else "gpt2"
    elif isinstance(name_or_cfg, str):
        key = name_or_cfg.lower()
        if key == "seed":
            vocab, fixed = "seed", 1
        elif key in _NAMES:
            vocab = _NAMES[key]
        else:
            # Lazy: only preset names need the config module (which imports no jax/torch either).
            from jax_whisper.config import PRESETS

            if name_or_cfg not in PRESETS:
                raise ValueError(f"unknown tokenizer {name_or_cfg!r}; choose from "
                                 f"{['seed', *_NAMES]} or a preset name {sorted(PRESETS)}")
            vocab, fixed = _vocab_from_n_vocab(PRESETS[name_or_cfg].n_vocab)
    elif isinstance(getattr(name_or_cfg, "n_vocab", None), int):
        vocab, fixed = _vocab_from_n_vocab(name_or_cfg.n_vocab)
    else:
        raise ValueError(f"get_tokenizer expects a name or a config with n_vocab, got {name_or_cfg!r}")

    if multilingual is not None and bool(multilingual) != (vocab == "multilingual"):
        raise ValueError(f"multilingual={multilingual} contradicts {name_or_cfg!r} ({vocab} vocabulary)")
    if fixed is not None and num_languages is not None and num_languages != fixed:
        raise ValueError(f"num_languages={num_languages} contradicts {name_or_cfg!r} ({fixed} languages)")
    num_languages = fixed or num_languages or 99
    if vocab == "multilingual":
        language = language if language is not None else "en"
        task = task if task is not None else "transcribe"
    return _intern(Tokenizer(vocab, num_languages, language, task))


@cache
def _intern(tok: Tokenizer) -> Tokenizer:
    # Keyed on the normalized fields, so "english" and "en" give the same object (and its cached properties).
    return tok


# ---- characters for the optional auxiliary CTC loss on the encoder ----

# Blank is 0; lower-case letters, apostrophe, digits and space. A character vocabulary (not BPE) keeps the
# CTC projection tiny and the label sequence well within the encoder's frame count.
CTC_CHARS = "_ abcdefghijklmnopqrstuvwxyz'0123456789"
CTC_BLANK = 0
_CTC_INDEX = {c: i for i, c in enumerate(CTC_CHARS) if i != CTC_BLANK}


def ctc_encode(text: str) -> list[int]:
    """Character ids of ``text`` for CTC: lower-cased, whitespace collapsed, other characters dropped."""
    return [_CTC_INDEX[c] for c in " ".join(text.lower().split()) if c in _CTC_INDEX]


def ctc_decode(ids: Iterable[int]) -> str:
    """Greedy CTC output to text: merge repeats, then drop blanks."""
    out, prev = [], None
    for i in ids:
        i = int(i)
        if i != prev and i != CTC_BLANK:
            out.append(CTC_CHARS[i])
        prev = i
    return " ".join("".join(out).split())


__all__ = [
    "CTC_BLANK", "CTC_CHARS", "ctc_decode", "ctc_encode",
    "IGNORE_ID", "LANGUAGES", "TO_LANGUAGE_CODE", "Tokenizer", "get_tokenizer", "normalize_language",
]


# ---- the same tokenizer as Hugging Face ``tokenizers`` files (for exports to transformers and faster-whisper) ----


@cache
def _byte_chars() -> tuple[str, ...]:
    """GPT-2's byte-level alphabet, the characters BPE files store for bytes: printable Latin-1 bytes stand for
    themselves, the other 68 map in order onto code points from 256 (space -> "Ġ")."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = [], 0
    for b in range(256):
        chars.append(chr(b) if b in printable else chr(256 + extra))
        extra += b not in printable
    return tuple(chars)


@cache
def _vocab_and_merges(vocab: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The BPE ranks as byte-level strings in id order, and the merge list that reproduces tiktoken's encoding.

    A token's merge is the last step of byte-pair-encoding the token itself with the lower ranks only (what
    tiktoken does on it): the two parts left. For GPT-2's ranks this recovers GPT-2's own merges.txt."""
    ranks = _load_ranks("multilingual.tiktoken" if vocab == "multilingual" else "gpt2.tiktoken")
    chars = _byte_chars()
    text = lambda b: "".join(chars[x] for x in b)  # noqa: E731
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
            best, i = min(pairs)
            if best >= rank:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append((text(parts[0]), text(parts[1])))
    strings = [text(t) for t, _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    return tuple(strings), tuple(merges)


def hf_tokenizer_json(tok: Tokenizer) -> dict[str, Any]:
    """``tokenizer.json`` (Hugging Face ``tokenizers``) that encodes and decodes as ``tok``: byte-level BPE with
    GPT-2's split pattern and ``tok``'s merges; the special tokens (``<|endoftext|>`` ... ``<|notimestamps|>``) are
    added special tokens with ``tok``'s ids, the timestamps added plain ones, and ``<|endoftext|>`` is in the BPE
    vocabulary too (GPT-2's ``vocab.json`` has it), as on the hub's Whisper models."""
    strings, merges = _vocab_and_merges(tok.vocab)
    named = {hub_name(tok, name): i for name, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])}
    added = [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": not _is_timestamp(name)} for name, i in named.items()]
    ends = {"<|startoftranscript|>": tok.sot, "<|notimestamps|>": tok.no_timestamps, "<|endoftext|>": tok.eot}
    special = lambda name, type_id=0: {"SpecialToken": {"id": name, "type_id": type_id}}  # noqa: E731
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special(SOT), special(NO_TIMESTAMPS), {"Sequence": {"id": "A", "type_id": 0}}, special(EOT)],
            "pair": [special(SOT), special(NO_TIMESTAMPS), {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}, special(EOT, 1)],
            "special_tokens": {name: {"id": name, "ids": [i], "tokens": [name]} for name, i in ends.items()},
        },
        "decoder": {**byte_level, "add_prefix_space": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {**{s: i for i, s in enumerate(strings)}, EOT: tok.eot},
                  "merges": [f"{a} {b}" for a, b in merges]},
    }


def vocabulary_strings(tok: Tokenizer) -> list[str]:
    """Every id's token as a string, in id order (CTranslate2's ``vocabulary.json``): byte-level BPE strings,
    then the special and timestamp tokens."""
    strings, _ = _vocab_and_merges(tok.vocab)
    return [*strings, *(hub_name(tok, name) for name in sorted(tok.special_tokens, key=tok.special_tokens.get))]


def hub_name(tok: Tokenizer, name: str) -> str:
    """A special token's name in the hub's tokenizer files: before large-v3 (fewer than 100 languages) Hugging Face
    and CTranslate2 call the no-speech token ``<|nocaptions|>``, as openai-whisper did when they were made (same id;
    faster-whisper looks up either name, and ctranslate2's converter counts only ``<|nocaptions|>`` as no
    language)."""
    return "<|nocaptions|>" if name == NO_SPEECH and tok.num_languages < 100 else name


def _is_timestamp(name: str) -> bool:
    return name[2:3].isdigit()
