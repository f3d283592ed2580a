"""Dataset sources for training and evaluation: one record type, random access, cheap metadata, counted drops.

Every source yields **records** ``{"id": str, "text": str, "audio": np.ndarray}`` where ``audio`` is mono
float32 at 16 kHz and ``text`` is the normalised transcript. Open one with :func:`open_dataset`::

    src = open_dataset("synthetic", "train", cache_dir=..., max_seconds=5.0, n_train=2000)
    src = open_dataset("manifest:/data/corpus/train.jsonl", "train")
    src = open_dataset("audiofolder:/data/myfolder", "validation")
    src = open_dataset("librispeech", "train.clean.100")
    src = open_dataset("gigaspeech", "train", subset="xs")          # gated: needs a HF token

Specs
-----
``synthetic``
    The eSpeak corpus of :func:`jax_whisper.synthetic.ensure_corpus`; ``cache_dir`` is its cache directory
    and the corpus parameters (``n_train``, ``n_val``, ``n_test``, ``seed``, ...) plus ``workers`` /
    ``progress`` pass through as keyword arguments. Splits ``train`` / ``validation`` (alias ``dev``,
    ``val``) / ``test``.
``manifest:PATH``
    A JSONL manifest, one ``{"audio": ..., "text": ...}`` per line (optional ``id``, ``duration``, and
    ``group``, a subset evaluation scores apart; the synthetic corpus's ``heldout_voice`` sets it; and
    ``speech_start`` / ``speech_end``, the seconds where the speech begins and ends, which timestamp targets
    need; the synthetic corpus records them). Relative
    ``audio`` paths resolve against the manifest's folder, absolute ones are kept. If ``PATH`` is a
    directory, the manifest is ``PATH/<split>.jsonl``; if ``PATH`` contains ``{split}`` it is formatted with
    the split; otherwise ``PATH`` is used as-is and ``split`` is ignored.
``audiofolder:DIR``
    Hugging Face AudioFolder layout: ``DIR/<split>/metadata.csv`` if that exists, else ``DIR/metadata.csv``
    (then ``split`` is ignored: the whole folder is one split). ``metadata.jsonl`` works in place of the CSV.
    Columns: ``file_name`` (relative to the metadata file's folder) and a transcript column, the first of
    ``transcription``, ``text``, ``sentence``; optional ``id``, ``duration``. The file is read here (no
    ``datasets`` involved) and audio decoded with soundfile.
``librispeech`` (``openslr/librispeech_asr``)
    ``split`` is a dotted LibriSpeech name (``train.clean.100``, ``train.clean.360``, ``train.other.500``,
    ``validation.clean``, ``validation.other``, ``test.clean``, ``test.other``), mapped to the hub's
    per-config names (config ``clean`` split ``train.100``, ...) by :func:`librispeech_config_split`; or pass
    ``config=`` to give the hub config and split verbatim. Text is lower-cased.
``gigaspeech`` (``speechcolab/gigaspeech``, gated)
    ``subset=`` ``xs`` (default) / ``s`` / ``m`` / ``l`` / ``xl`` chooses the training config; ``split`` is
    ``train`` / ``validation`` (alias ``dev``) / ``test``. Text goes through :func:`gigaspeech_normalize`.
    ``gigaspeech:s`` is short for ``subset="s"``.

Hub sources call ``datasets.load_dataset(repo, config, split=..., token=..., cache_dir=cache_dir)`` and cast
``audio`` to ``Audio(decode=False)``; the ``{"bytes", "path"}`` field is decoded here by
:func:`decode_audio_field` (soundfile + soxr), because ``datasets`` 5 decodes with torchcodec. For offline
use and tests, ``hub_path=DIR`` (a ``save_to_disk`` directory, a ``DatasetDict`` is indexed by the hub split)
or ``data_files=`` (parquet file(s) with the hub's columns) replace the download; everything after loading
is the same code path.

Filtering
---------
At open time (no audio decoded): empty transcripts (``stats.empty``), GigaSpeech garbage utterances
(``stats.garbage``) and, with ``max_seconds``, utterances whose metadata duration exceeds it
(``stats.too_long``; never truncated) are dropped. Durations come from metadata (GigaSpeech
``end_time - begin_time``, a manifest / CSV ``duration``) or, for local files without one, from the file
header (``soundfile.info``, ``probe=True`` by default for file sources); a file whose header can't be read is
dropped as ``stats.unreadable`` with one log line naming it. Hub sources without durations (LibriSpeech) are
checked after decoding: ``source[i]`` then returns ``None`` for an item that turns out too long or
unreadable (counted once per index); ``iter(source)`` skips those. So ``len(source)`` is exact for
file sources and GigaSpeech, and an upper bound for LibriSpeech with ``max_seconds``.

``Source`` has ``__len__`` / ``__getitem__`` (what grain's ``RandomAccessDataSource`` / ``MapDataset.source``
need), ``metadata(i)`` (``ItemMeta``: id, text, duration or None; no decoding) and ``stats``. Stats counted
at decode time live in the process that decoded (grain worker processes keep their own copies).

This module imports neither jax nor torch (the torch trainer shares it).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
LIBRISPEECH_REPO = "openslr/librispeech_asr"
GIGASPEECH_REPO = "speechcolab/gigaspeech"
GIGASPEECH_SUBSETS = ("xs", "s", "m", "l", "xl")

Record = dict  # {"id": str, "text": str, "audio": np.ndarray float32 mono 16 kHz}


@dataclass(frozen=True)
class ItemMeta:
    """What is known about an item without decoding its audio."""

    id: str
    text: str
    duration: float | None  # seconds, None when unknown before decoding
    group: str | None = None  # evaluation subset scored apart (the synthetic corpus: heldout_voices / train_voices)
    span: tuple[float, float] | None = None  # (start, end) of the speech in seconds, for timestamp targets


class DataError(ValueError):
    """A dataset the user pointed at is unusable (a missing or malformed manifest, no usable utterance): the
    message is one line naming the file (and line) and what was expected; scripts print it without a traceback."""


@dataclass
class DropStats:
    """Counts of dropped utterances, by reason."""

    too_long: int = 0
    empty: int = 0
    garbage: int = 0
    unreadable: int = 0

    @property
    def total(self) -> int:
        return self.too_long + self.empty + self.garbage + self.unreadable

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# ==========================================================================================================
# Text normalisation
# ==========================================================================================================

GIGASPEECH_PUNCTUATION = {"<COMMA>": ",", "<PERIOD>": ".", "<QUESTIONMARK>": "?", "<EXCLAMATIONPOINT>": "!"}
GIGASPEECH_GARBAGE = ("<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>")
GIGASPEECH_FILLERS = (
    "UH", "UHH", "UM", "EH", "MM", "HM", "AH", "HUH", "HA", "ER", "OOF", "HEE", "ACH", "EEE", "EW",
)  # fmt: skip
_UNK_TAGS = ("<UNK>",)
_NON_SCORING = frozenset(GIGASPEECH_FILLERS + _UNK_TAGS + tuple(GIGASPEECH_PUNCTUATION) + GIGASPEECH_GARBAGE)
_EDGE_PUNCT = ",.?!"


def collapse_whitespace(text: str | None) -> str:
    """``"  a \\n b "`` -> ``"a b"`` (the manifest / audiofolder / synthetic normalisation)."""
    return " ".join((text or "").split())


def librispeech_normalize(text: str | None) -> str:
    """LibriSpeech transcripts are upper case without punctuation: lower-case them."""
    return collapse_whitespace(text).lower()


def is_gigaspeech_garbage(text: str | None) -> bool:
    """True if a GigaSpeech transcript holds a garbage tag (``<SIL> <MUSIC> <NOISE> <OTHER>``)."""
    return any(tok in GIGASPEECH_GARBAGE for tok in (text or "").upper().split())


def gigaspeech_normalize(text: str | None, *, punctuation: str = "attach") -> str:
    """A GigaSpeech transcript in training form (call :func:`is_gigaspeech_garbage` first: garbage is dropped).

    Lower case; ``<COMMA> <PERIOD> <QUESTIONMARK> <EXCLAMATIONPOINT>`` become ``, . ? !`` attached to the
    previous word (``punctuation="attach"``, the default; a tag with no previous word is dropped) or are
    removed (``punctuation="drop"``). Stray garbage tags are removed. ``"HELLO <COMMA> WORLD <PERIOD>"`` ->
    ``"hello, world."``.
    """
    if punctuation not in ("attach", "drop"):
        raise ValueError(f"punctuation must be 'attach' or 'drop', got {punctuation!r}")
    words: list[str] = []
    for tok in (text or "").split():
        up = tok.upper()
        if up in GIGASPEECH_PUNCTUATION:
            if punctuation == "attach" and words:
                words[-1] += GIGASPEECH_PUNCTUATION[up]
            continue
        if up in GIGASPEECH_GARBAGE:
            continue
        words.append(tok.lower())
    return " ".join(words)


def gigaspeech_score_normalize(text: str | None) -> str:
    """GigaSpeech's official scoring normalisation (``utils/gigaspeech_scoring.py``), for WER on both sides.

    Upper-case; hyphens -> spaces; drop the conversational fillers (UH UHH UM EH MM HM AH HUH HA ER OOF HEE
    ACH EEE EW), ``<UNK>``, the punctuation tags and the garbage tags. Extension beyond the official script:
    ``, . ? !`` stuck to a word's ends are stripped too, since our training text attaches punctuation
    (:func:`gigaspeech_normalize`), so hypotheses carry it.
    """
    out = []
    for tok in (text or "").upper().replace("-", " ").split():
        if tok in _NON_SCORING:
            continue
        tok = tok.strip(_EDGE_PUNCT)
        if tok and tok not in _NON_SCORING:
            out.append(tok)
    return " ".join(out)


# ==========================================================================================================
# Audio decoding
# ==========================================================================================================


def _to_mono_16k(data: np.ndarray, sr: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    import soxr

    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    else:
        mono = data.reshape(-1)
    if mono.size == 0:
        raise ValueError("audio holds no samples")
    if not np.isfinite(mono).all():  # a float WAV can hold them; they would poison a batch or a transcript
        raise ValueError(f"{int(np.count_nonzero(~np.isfinite(mono)))} of {mono.size} samples are NaN or infinite")
    if int(sr) != int(sample_rate):
        mono = soxr.resample(mono, int(sr), int(sample_rate), quality="VHQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def read_audio_file(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A file (anything libsndfile reads: WAV, FLAC, OGG, MP3, ...) as mono float32 at ``sample_rate``:
    channels averaged, soxr VHQ when the rate differs. The project's one file decoder
    (``jax_whisper.audio.load_audio`` calls it); kept here because this module must not import jax.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file when it can't be decoded
    or holds no samples.
    """
    import soundfile as sf

    path_str = os.fspath(path)
    if not os.path.exists(path_str):
        raise FileNotFoundError(f"no such audio file: {path_str!r}")
    try:
        data, sr = sf.read(path_str, dtype="float32", always_2d=True)  # (frames, channels)
        return _to_mono_16k(data, sr, sample_rate)
    except Exception as e:  # soundfile.LibsndfileError, RuntimeError, our own "no samples", ...
        raise ValueError(f"cannot decode audio file {path_str!r}: {e}") from e


def decode_audio_field(value: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A ``datasets`` audio field as mono float32 at ``sample_rate``.

    Accepts ``{"bytes": ..., "path": ...}`` (``Audio(decode=False)``; bytes win when present, else the path
    is read), ``{"array": ..., "sampling_rate": ...}`` (already decoded), a path string or raw bytes.
    """
    import soundfile as sf

    if isinstance(value, dict):
        if value.get("array") is not None:
            return _to_mono_16k(np.asarray(value["array"]), int(value["sampling_rate"]), sample_rate)
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise ValueError("audio field has neither bytes nor path")
    if isinstance(value, bytes | bytearray | memoryview):
        data, sr = sf.read(io.BytesIO(bytes(value)), dtype="float32", always_2d=True)
        return _to_mono_16k(data, sr, sample_rate)
    if isinstance(value, str | os.PathLike):
        return read_audio_file(value, sample_rate)
    raise TypeError(f"cannot decode an audio field of type {type(value).__name__}")


def _audio_name(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("path") or "<bytes>")
    return str(value) if isinstance(value, str | os.PathLike) else "<bytes>"


# ==========================================================================================================
# Source
# ==========================================================================================================


class Source:
    """A random-access list of utterances, filtered at open time; see the module docstring.

    ``metas[i]`` is the metadata of kept item ``i`` and ``refs[i]`` what ``load(ref)`` turns into audio.
    """

    def __init__(
        self,
        name: str,
        metas: Sequence[ItemMeta],
        refs: Sequence[Any],
        load: Callable[[Any], np.ndarray],
        *,
        stats: DropStats | None = None,
        max_seconds: float | None = None,
        describe: Callable[[Any], str] = str,
    ):
        if len(metas) != len(refs):
            raise ValueError("metas and refs differ in length")
        self.name = name
        self._metas = list(metas)
        self._refs = list(refs)
        self._load = load
        self._describe = describe
        self.max_seconds = max_seconds
        self.stats = stats if stats is not None else DropStats()
        self._late_drops: set[int] = set()  # indices dropped at decode time (counted once)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # picklable for grain worker processes (locks are not)
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Source({self.name!r}, n={len(self)}, dropped={self.stats.as_dict()})"

    def __len__(self) -> int:
        return len(self._metas)

    def metadata(self, i: int) -> ItemMeta:
        return self._metas[i]

    def durations(self) -> list[float | None]:
        return [m.duration for m in self._metas]

    def _late_drop(self, i: int, reason: str) -> None:
        with self._lock:
            if i not in self._late_drops:
                self._late_drops.add(i)
                setattr(self.stats, reason, getattr(self.stats, reason) + 1)

    def __getitem__(self, i: int) -> Record | None:
        """The record of item ``i``; ``None`` if its audio is unreadable or longer than ``max_seconds``."""
        i = int(i)
        if i < 0:
            i += len(self)
        meta = self._metas[i]
        ref = self._refs[i]
        try:
            audio = self._load(ref)
        except Exception as e:  # corrupt, missing, unsupported: skip, never crash the pass
            self._late_drop(i, "unreadable")
            log.warning("%s: skipping unreadable audio %s (%s)", self.name, self._describe(ref), e)
            return None
        if self.max_seconds is not None and audio.shape[0] > self.max_seconds * SAMPLE_RATE:
            self._late_drop(i, "too_long")
            return None
        return {"id": meta.id, "text": meta.text, "audio": audio}

    def __iter__(self) -> Iterator[Record]:
        """All readable records in order (drops skipped)."""
        for i in range(len(self)):
            r = self[i]
            if r is not None:
                yield r


class _Builder:
    """Collects candidate items, applying the open-time filters and counting drops."""

    def __init__(self, name: str, max_seconds: float | None, probe: Callable[[Any], float] | None = None):
        self.name = name
        self.max_seconds = max_seconds
        self.probe = probe
        self.stats = DropStats()
        self.metas: list[ItemMeta] = []
        self.refs: list[Any] = []

    def add(self, id_: str, text: str, duration: float | None, ref: Any, *, garbage: bool = False,
            group: str | None = None, span: tuple[float, float] | None = None) -> None:
        if garbage:
            self.stats.garbage += 1
            return
        if not text:
            self.stats.empty += 1
            return
        if duration is None and self.probe is not None:
            try:
                duration = float(self.probe(ref))
            except Exception as e:
                self.stats.unreadable += 1
                log.warning("%s: skipping unreadable audio %s (%s)", self.name, ref, e)
                return
        if self.max_seconds is not None and duration is not None and duration > self.max_seconds:
            self.stats.too_long += 1
            return
        self.metas.append(ItemMeta(id=str(id_), text=text, duration=None if duration is None else float(duration),
                                   group=group, span=span))
        self.refs.append(ref)

    def build(self, load: Callable[[Any], np.ndarray], describe: Callable[[Any], str] = str) -> Source:
        src = Source(
            self.name, self.metas, self.refs, load, stats=self.stats, max_seconds=self.max_seconds, describe=describe
        )
        if self.stats.total:
            log.info("%s: kept %d, dropped %s", self.name, len(src), self.stats.as_dict())
        return src


def _probe_file(path: str) -> float:
    import soundfile as sf

    if not os.path.exists(path):
        raise FileNotFoundError("no such file")  # soundfile would say "System error."
    info = sf.info(path)
    if info.frames <= 0 or info.samplerate <= 0:
        raise ValueError("no samples")
    return info.frames / info.samplerate


def _float_or_none(v: Any) -> float | None:
    if v is None or v == "":
        return None
    return float(v)


# ---------------------------------------------------------------------------------------------- local files


_SPLIT_ALIASES = {"dev": "validation", "val": "validation", "valid": "validation"}


def _manifest_path(path: str, split: str) -> Path:
    if "{split}" in path:
        return Path(path.format(split=split))
    p = Path(path)
    if p.is_dir():
        for s in (split, _SPLIT_ALIASES.get(split, split)):
            if (p / f"{s}.jsonl").is_file():
                return p / f"{s}.jsonl"
        return p / f"{split}.jsonl"
    return p


def open_manifest(
    path: str | os.PathLike, *, max_seconds: float | None = None, probe: bool = True, name: str | None = None
) -> Source:
    """A JSONL manifest (see module docstring); text stripped and whitespace-collapsed.

    A malformed line (not UTF-8, not a JSON object, no ``audio`` string, a ``text`` that is not a string, a
    ``duration`` that is not a number) raises :class:`DataError` naming the file and line: a manifest is made by
    a program, and skipping its broken lines would hide that program's bug. A row whose audio file is missing or
    unreadable is a counted skip (``stats.unreadable``, one log line each), as in every file source.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {str(path)!r}: no such file")
    b = _Builder(name or f"manifest:{path}", max_seconds, _probe_file if probe else None)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"manifest {str(path)!r} line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object {{\"audio\": ..., \"text\": ...}}, got "
                                f"{type(row).__name__}")
            if not isinstance(row.get("audio"), str) or not row["audio"]:
                raise DataError(f"{where}: no \"audio\" path (a non-empty string is required)")
            if row.get("text") is not None and not isinstance(row["text"], str):
                raise DataError(f"{where}: \"text\" must be a string, got {type(row['text']).__name__}")
            try:
                duration = _float_or_none(row.get("duration"))
                if duration is not None and not 0 <= duration < float("inf"):
                    raise ValueError
            except (TypeError, ValueError):
                raise DataError(f"{where}: \"duration\" must be a number of seconds, got {row['duration']!r}"
                                ) from None
            span = _span(row, duration, where)
            audio = str((path.parent / row["audio"]).resolve())  # absolute paths survive the join
            id_ = row.get("id") or Path(row["audio"]).stem or f"{path.stem}-{lineno}"
            b.add(str(id_), collapse_whitespace(row.get("text")), duration, audio, group=_group(row), span=span)
    return b.build(read_audio_file)


def _span(row: dict, duration: float | None, where: str) -> tuple[float, float] | None:
    """A manifest row's ``(speech_start, speech_end)``: both or neither, numbers with 0 <= start <= end (<= the
    row's duration when it gives one)."""
    start, end = row.get("speech_start"), row.get("speech_end")
    if start is None and end is None:
        return None
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (start, end))
    if not ok or not 0 <= start <= end < float("inf") or (duration is not None and end > duration + 1e-3):
        raise DataError(f"{where}: \"speech_start\" and \"speech_end\" must be seconds with 0 <= start <= end"
                        f"{' <= duration' if duration is not None else ''}, got {start!r} and {end!r}")
    return float(start), float(end)


def _group(row: dict) -> str | None:
    """A manifest row's scoring group: its ``group`` string, or from the synthetic corpus's ``heldout_voice``."""
    if isinstance(row.get("group"), str):
        return row["group"]
    if isinstance(row.get("heldout_voice"), bool):
        return "heldout_voices" if row["heldout_voice"] else "train_voices"
    return None


_TRANSCRIPT_COLUMNS = ("transcription", "text", "sentence")


def open_audiofolder(
    directory: str | os.PathLike, split: str, *, max_seconds: float | None = None, probe: bool = True
) -> Source:
    """An AudioFolder directory (see module docstring)."""
    d = Path(directory)
    candidates = [d / s for s in dict.fromkeys((split, _SPLIT_ALIASES.get(split, split)))] + [d]
    meta_file = None
    for folder in candidates:
        for fname in ("metadata.csv", "metadata.jsonl"):
            if (folder / fname).is_file():
                meta_file = folder / fname
                break
        if meta_file is not None:
            break
    if meta_file is None:
        raise FileNotFoundError(f"audiofolder: no metadata.csv or metadata.jsonl in {d}/{split} or {d}")
    if meta_file.suffix == ".csv":
        with open(meta_file, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        with open(meta_file, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    columns = set(rows[0]) if rows else set()
    text_col = next((c for c in _TRANSCRIPT_COLUMNS if c in columns), None)
    if rows and ("file_name" not in columns or text_col is None):
        raise DataError(
            f"audiofolder: {meta_file} needs a file_name column and one of {_TRANSCRIPT_COLUMNS}, has {sorted(columns)}"
        )
    b = _Builder(f"audiofolder:{d}[{split}]", max_seconds, _probe_file if probe else None)
    for row in rows:
        audio = str((meta_file.parent / row["file_name"]).resolve())
        id_ = row.get("id") or Path(row["file_name"]).stem
        b.add(id_, collapse_whitespace(row.get(text_col)), _float_or_none(row.get("duration")), audio)
    return b.build(read_audio_file)


def open_synthetic(
    split: str, *, cache_dir: str | os.PathLike | None = None, max_seconds: float | None = None, **params
) -> Source:
    """The synthetic eSpeak corpus (built and cached by :func:`jax_whisper.synthetic.ensure_corpus`)."""
    from jax_whisper import synthetic

    split = _SPLIT_ALIASES.get(split, split)
    if split not in synthetic.SPLITS:
        raise ValueError(f"synthetic: unknown split {split!r}; expected one of {synthetic.SPLITS}")
    manifests = synthetic.ensure_corpus(cache_dir, **params)
    return open_manifest(manifests[split], max_seconds=max_seconds, name=f"synthetic[{split}]")


# ---------------------------------------------------------------------------------------------- hub sources


def librispeech_config_split(split: str) -> tuple[str, str]:
    """A dotted LibriSpeech split name -> the hub's (config, split): ``train.clean.100`` -> (clean, train.100)."""
    parts = split.split(".")
    if len(parts) >= 2 and parts[1] in ("clean", "other"):
        return parts[1], ".".join([parts[0]] + parts[2:])
    raise ValueError(
        f"librispeech: split {split!r} is not like train.clean.100 / validation.other / test.clean; "
        "pass config= to give the hub config and split verbatim"
    )


def load_hub_split(
    repo_id: str,
    config: str | None,
    split: str,
    *,
    hub_path: str | os.PathLike | None = None,
    data_files: Any = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
):
    """A ``datasets.Dataset`` for one split, with ``audio`` cast to ``Audio(decode=False)``.

    ``hub_path`` (a ``save_to_disk`` directory) or ``data_files`` (parquet) replace the hub download.
    ``token`` defaults to ``$HF_TOKEN`` (else the stored login).
    """
    import datasets

    if hub_path is not None:
        ds = datasets.load_from_disk(os.fspath(hub_path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    elif data_files is not None:
        ds = datasets.load_dataset("parquet", data_files=data_files, split="train", cache_dir=cache_dir)
    else:
        token = token if token is not None else (os.environ.get("HF_TOKEN") or None)
        ds = datasets.load_dataset(repo_id, config, split=split, token=token, cache_dir=cache_dir)
    return ds.cast_column("audio", datasets.Audio(decode=False))


class _HubAudio:
    """Picklable loader: row index of a ``datasets.Dataset`` -> decoded audio."""

    def __init__(self, ds):
        self.ds = ds

    def __call__(self, row: int) -> np.ndarray:
        return decode_audio_field(self.ds[int(row)]["audio"])

    def describe(self, row: int) -> str:
        try:
            return f"row {row} ({_audio_name(self.ds[int(row)]['audio'])})"
        except Exception:
            return f"row {row}"


def _columns(ds, names: Sequence[str]) -> dict[str, list]:
    table = ds.select_columns(list(names)).with_format("arrow")[:]
    return {n: table.column(n).to_pylist() for n in names}


def open_librispeech(
    split: str,
    *,
    config: str | None = None,
    max_seconds: float | None = None,
    cache_dir: str | os.PathLike | None = None,
    hub_path: str | os.PathLike | None = None,
    data_files: Any = None,
    token: str | bool | None = None,
) -> Source:
    """LibriSpeech (``openslr/librispeech_asr``); text lower-cased; length checked after decoding."""
    cfg, hub_split = (config, split) if config is not None else librispeech_config_split(split)
    ds = load_hub_split(
        LIBRISPEECH_REPO, cfg, hub_split, hub_path=hub_path, data_files=data_files, cache_dir=cache_dir, token=token
    )
    cols = _columns(ds, ["id", "text"])
    b = _Builder(f"librispeech[{split}]", max_seconds)
    for row, (id_, text) in enumerate(zip(cols["id"], cols["text"], strict=True)):
        b.add(id_, librispeech_normalize(text), None, row)
    loader = _HubAudio(ds)
    return b.build(loader, loader.describe)


def open_gigaspeech(
    split: str,
    *,
    subset: str = "xs",
    punctuation: str = "attach",
    max_seconds: float | None = None,
    cache_dir: str | os.PathLike | None = None,
    hub_path: str | os.PathLike | None = None,
    data_files: Any = None,
    token: str | bool | None = None,
) -> Source:
    """GigaSpeech (``speechcolab/gigaspeech``, config = ``subset``); see :func:`gigaspeech_normalize`."""
    if subset not in GIGASPEECH_SUBSETS + ("dev", "test"):
        raise ValueError(f"gigaspeech: unknown subset {subset!r}; expected one of {GIGASPEECH_SUBSETS}")
    split = _SPLIT_ALIASES.get(split, split)
    ds = load_hub_split(
        GIGASPEECH_REPO, subset, split, hub_path=hub_path, data_files=data_files, cache_dir=cache_dir, token=token
    )
    cols = _columns(ds, ["segment_id", "text", "begin_time", "end_time"])
    b = _Builder(f"gigaspeech[{subset}/{split}]", max_seconds)
    for row, (sid, text, t0, t1) in enumerate(
        zip(cols["segment_id"], cols["text"], cols["begin_time"], cols["end_time"], strict=True)
    ):
        duration = float(t1) - float(t0) if t0 is not None and t1 is not None else None
        garbage = is_gigaspeech_garbage(text)
        norm = "" if garbage else gigaspeech_normalize(text, punctuation=punctuation)
        b.add(sid, norm, duration, row, garbage=garbage)
    loader = _HubAudio(ds)
    return b.build(loader, loader.describe)


# ==========================================================================================================
# Entry point
# ==========================================================================================================

SPECS = ("synthetic", "manifest:FILE", "audiofolder:DIR", "librispeech", "gigaspeech[:SUBSET]")


def open_dataset(
    spec: str,
    split: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    max_seconds: float | None = None,
    **kw,
) -> Source:
    """Open a dataset source by spec (see the module docstring); ``kw`` goes to the per-spec opener."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        return open_synthetic(split, cache_dir=cache_dir, max_seconds=max_seconds, **kw)
    if kind == "manifest":
        if not arg:
            raise DataError("manifest spec needs a path: manifest:FILE.jsonl")
        return open_manifest(_manifest_path(arg, split), max_seconds=max_seconds, **kw)
    if kind == "audiofolder":
        if not arg:
            raise DataError("audiofolder spec needs a directory: audiofolder:DIR")
        return open_audiofolder(arg, split, max_seconds=max_seconds, **kw)
    if kind == "librispeech":
        if arg:
            kw.setdefault("config", arg)
        return open_librispeech(split, cache_dir=cache_dir, max_seconds=max_seconds, **kw)
    if kind == "gigaspeech":
        if arg:
            kw.setdefault("subset", arg)
        return open_gigaspeech(split, cache_dir=cache_dir, max_seconds=max_seconds, **kw)
    raise DataError(f"unknown dataset spec {spec!r}; expected one of {SPECS}")


__all__ = [
    "DataError",
    "DropStats",
    "ItemMeta",
    "Record",
    "Source",
    "SAMPLE_RATE",
    "GIGASPEECH_FILLERS",
    "GIGASPEECH_GARBAGE",
    "GIGASPEECH_PUNCTUATION",
    "collapse_whitespace",
    "decode_audio_field",
    "gigaspeech_normalize",
    "gigaspeech_score_normalize",
    "is_gigaspeech_garbage",
    "librispeech_config_split",
    "librispeech_normalize",
    "load_hub_split",
    "open_audiofolder",
    "open_dataset",
    "open_gigaspeech",
    "open_librispeech",
    "open_manifest",
    "open_synthetic",
    "read_audio_file",
]
