"""The synthetic corpus builder: the training and held-out voices, and :func:`build_corpus` /
:func:`ensure_corpus`, which render train / validation / test splits to ``<corpus>/<split>/<id>.flac`` plus
``<corpus>/<split>.jsonl`` manifests and ``<corpus>/corpus.json``, in parallel worker processes and atomically.
The sentences come from :mod:`~jax_whisper.synthetic.grammar`, the audio from :mod:`~jax_whisper.synthetic.espeak`.

Manifest rows hold ``"audio"`` as a path **relative to the corpus directory** (the directory that holds
the ``.jsonl`` files), so a corpus can be moved or renamed into place atomically; :func:`load_manifest`
resolves them to absolute paths. Test and validation sentences never occur in train, and both include
held-out voices that training never hears.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import inspect
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jax_whisper.synthetic.espeak import SAMPLE_RATE, ESpeak
from jax_whisper.synthetic.grammar import _generator, normalize_text

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: rows give the speech's start and end (speech_start, speech_end) for timestamp targets
SPLITS = ("train", "validation", "test")

# Training hears many voices: an unseen voice is recognised far better by a model that heard 70 than by one that
# heard 9 (the earlier default's 9 come first). Each of eSpeak's English accents (US, New York, GB,
# RP, Caribbean, Scottish, Lancastrian, West Midlands) is paired with a share of its voice variants. The held-out
# voices use variants (f1, m6) that no training voice uses, so evaluation keeps two truly unheard voices.
_ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
_VARIANTS = (  # all of eSpeak NG's variants but f1/m6 (held out) and the whispered, croaking and robotic ones
    "m1", "m2", "m3", "m4", "m5", "m7", "m8", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3", "klatt4",
    "klatt5", "klatt6", "Alex", "Andy", "Annie", "adam", "anika", "aunty", "benjamin", "boris", "caleb", "david",
    "ed", "edward", "grandma", "grandpa", "ian", "iven", "john", "linda", "max", "michel", "norbert", "paul",
    "quincy", "rob", "robert", "steph", "travis", "victor", "zac", "Gene", "Lee", "Mike", "Michael", "Reed",
    "Storm", "Jacky", "shelby", "belinda", "Alicia", "Andrea", "Denis", "announcer", "gustave", "pablo", "sandro",
    "marcelo", "mike2",
)
_FIRST_VOICES = (
    "en-us+m3", "en-us+f3", "en+m1", "en+f4", "en-gb-x-rp+m5", "en-029+f2", "en-gb-scotland+m2", "en-us+klatt4",
    "en-us+f5",
)
TRAIN_VOICES = _FIRST_VOICES + tuple(
    v for v in (f"{_ACCENTS[i % len(_ACCENTS)]}+{name}" for i, name in enumerate(_VARIANTS))
    if v not in _FIRST_VOICES
)
HELDOUT_VOICES = ("en-gb-x-rp+f1", "en-us+m6")




@dataclass(frozen=True)
class _Item:
    id: str
    split: str
    text: str
    n_words: int
    voice: str
    heldout_voice: bool
    rate: int
    pitch: int
    seed: int
    snr_db: float | None


def _trim(audio: np.ndarray, rel_threshold: float = 0.005) -> np.ndarray:
    """Cut leading/trailing samples quieter than ``rel_threshold`` x peak (-46 dB)."""
    loud = np.flatnonzero(np.abs(audio) > rel_threshold * float(np.abs(audio).max()))
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio[:0]


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """White or pink (1/f power) Gaussian noise with unit variance."""
    white = rng.standard_normal(n)
    if rng.random() < 0.5:
        return white
    spec = np.fft.rfft(white)
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    pink = np.fft.irfft(spec / np.sqrt(f), n)
    return pink / (pink.std() + 1e-12)


def _render(
    item: _Item, margin: tuple[float, float] = (0.05, 0.2), max_duration: float = 5.0
) -> tuple[np.ndarray, int, int] | None:
    """The utterance as int16 at 16 kHz with the sample where its speech starts and the speech's length in samples,
    or None when longer than ``max_duration`` (never truncated)."""
    rng = np.random.default_rng(item.seed)
    speech = _trim(ESpeak().synthesize(item.text, item.voice, item.rate, item.pitch))
    if speech.size == 0:
        raise RuntimeError(f"eSpeak produced no audio for {item}")
    lead, trail = (int(rng.uniform(*margin) * SAMPLE_RATE) for _ in range(2))
    if (lead + speech.size + trail) / SAMPLE_RATE > max_duration:
        return None
    audio = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(trail, np.float32)]).astype(
        np.float64
    )
    if item.snr_db is not None:
        power = float(np.mean(speech.astype(np.float64) ** 2))
        audio += _noise(rng, audio.size) * np.sqrt(power / 10 ** (item.snr_db / 10))
    audio *= rng.uniform(0.3, 0.9) / max(float(np.abs(audio).max()), 1e-9)  # random peak level
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16), lead, speech.size


def _make(item: _Item, root: str, margin: tuple[float, float], max_duration: float) -> dict | None:
    """Render and write one utterance; the manifest row, or None if it was too long."""
    import soundfile as sf

    rendered = _render(item, margin, max_duration)
    if rendered is None:
        return None
    pcm, lead, n_speech = rendered
    rel = f"{item.split}/{item.id}.flac"
    sf.write(os.path.join(root, rel), pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    row = {
        "audio": rel,
        "text": item.text,
        "voice": item.voice,
        "duration": round(pcm.size / SAMPLE_RATE, 4),
        "speech_start": round(lead / SAMPLE_RATE, 6),  # the trimmed speech between the margins, to the sample
        "speech_end": round((lead + n_speech) / SAMPLE_RATE, 6),
        "n_words": item.n_words,
        "num_samples": int(pcm.size),
        "id": item.id,
        "split": item.split,
        "heldout_voice": item.heldout_voice,
        "rate": item.rate,
        "pitch": item.pitch,
        "snr_db": item.snr_db,
        "seed": item.seed,
    }
    return row


def _make_batch(
    items: list[_Item], root: str, margin: tuple[float, float], max_duration: float
) -> list[tuple[_Item, dict | None]]:
    return [(it, _make(it, root, margin, max_duration)) for it in items]


class _Planner:
    """Draws utterance specs; keeps every text in exactly one split."""

    def __init__(self, p: dict):
        self.p = p
        self.rng = np.random.default_rng(p["seed"])
        self.gen = _generator()
        self.owner: dict[str, str] = {}  # normalized text -> split
        self.count = {s: 0 for s in SPLITS}

    def text(self, split: str) -> tuple[str, int]:
        """A sentence owned by no other split; duplicates inside a split only when hard to avoid."""
        # n stays fixed across retries: redrawing it would thin out the short (few distinct) sentences
        n = int(self.rng.integers(self.p["min_words"], self.p["max_words"] + 1))
        for attempt in range(200):
            t = normalize_text(self.gen.sentence(self.rng, n))
            owner = self.owner.get(t)
            if owner is None or (owner == split and attempt >= 20):
                self.owner[t] = split
                return t, n
        raise RuntimeError(f"could not draw a new sentence for {split}; the grammar is exhausted")

    def item(self, split: str, voice: str) -> _Item:
        text, n = self.text(split)
        p, rng = self.p, self.rng
        snr = round(float(rng.uniform(*p["snr_db"])), 1) if rng.random() < p["noise"] else None
        idx = self.count[split]
        self.count[split] += 1
        return _Item(
            id=f"{split}-{idx:06d}",
            split=split,
            text=text,
            n_words=n,
            voice=voice,
            heldout_voice=voice in p["heldout_voices"],
            rate=int(rng.integers(p["rate"][0], p["rate"][1] + 1)),
            pitch=int(rng.integers(p["pitch"][0], p["pitch"][1] + 1)),
            seed=int(rng.integers(2**31)),
            snr_db=snr,
        )

    def voices(self, split: str, n: int) -> list[str]:
        """Balanced voice assignment; evaluation splits get ``heldout_fraction`` held-out voices."""
        train, held = list(self.p["train_voices"]), list(self.p["heldout_voices"])
        if split == "train":
            out = [train[i % len(train)] for i in range(n)]
        else:
            k = int(round(n * self.p["heldout_fraction"])) if held else 0
            out = [held[i % len(held)] for i in range(k)] + [train[i % len(train)] for i in range(n - k)]
        return [out[i] for i in self.rng.permutation(n)]


def _run(
    batches: Iterable[list[_Item]], root: Path, p: dict, workers: int, progress: Callable[[int], None]
) -> list[tuple[_Item, dict | None]]:
    """Render batches of items, in this process or in a pool of ``workers`` processes.

    ``batches`` is consumed lazily, so the parent plans the next batches while the workers render.
    """
    fn = functools.partial(
        _make_batch, root=str(root), margin=tuple(p["margin"]), max_duration=p["max_duration"]
    )
    out: list[tuple[_Item, dict | None]] = []
    if workers <= 1:
        for b in batches:
            out += fn(b)
            progress(len(b))
        return out
    # spawn, not fork: the caller may already run jax threads, which fork would copy in a broken state
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    pending: collections.deque = collections.deque()
    try:
        for b in batches:
            pending.append(pool.submit(fn, b))
            while len(pending) > 3 * workers:  # bounded: keep the workers busy, not the memory
                res = pending.popleft().result()
                out += res
                progress(len(res))
        while pending:
            res = pending.popleft().result()
            out += res
            progress(len(res))
    finally:
        pool.shutdown(cancel_futures=True)
    return out


def _default_workers() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(n, 8))


def _build_into(root: Path, p: dict, workers: int, progress: bool) -> dict:
    """Render the corpus described by ``p`` into the new directory ``root``; corpus.json is written last."""
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for s in SPLITS:
        (root / s).mkdir(parents=True)
    planner = _Planner(p)
    sizes = {"test": p["n_test"], "validation": p["n_val"], "train": p["n_train"]}
    # test first, so that train cannot claim a sentence the test split wants
    want: list[tuple[str, str]] = []
    for split in ("test", "validation", "train"):
        want += [(split, v) for v in planner.voices(split, sizes[split])]
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    dropped = 0
    processed = 0
    plan_seconds = 0.0
    total = sum(sizes.values())

    def report(k: int) -> None:
        nonlocal processed
        before, processed = processed, processed + k
        if progress and (before // 2000 != processed // 2000 or processed >= total):
            rate = processed / max(time.perf_counter() - t0, 1e-9)
            print(f"synthetic: {processed}/{total} utterances, {rate:.0f}/s", file=sys.stderr, flush=True)

    def plan(want: list[tuple[str, str]]) -> Iterable[list[_Item]]:
        nonlocal plan_seconds
        for i in range(0, len(want), 64):
            tp = time.perf_counter()
            batch = [planner.item(split, voice) for split, voice in want[i : i + 64]]
            plan_seconds += time.perf_counter() - tp
            yield batch

    for _round in range(20):
        if not want:
            break
        # a pool costs about a second to start: not worth it for small jobs
        n_proc = workers if len(want) >= 256 else 1
        results = _run(plan(want), root, p, n_proc, report)
        want = []
        for item, row in results:
            if row is None:  # too long: same split and voice, a fresh sentence next round
                dropped += 1
                want.append((item.split, item.voice))
            else:
                rows[item.split].append(row)
        total += len(want)
    if want:
        raise RuntimeError(
            f"{len(want)} utterances stayed longer than {p['max_duration']} s; "
            "lower max_words or raise the rate"
        )
    for s in SPLITS:
        rows[s].sort(key=lambda r: r["id"])
        with open(root / f"{s}.jsonl", "w") as f:
            for r in rows[s]:
                f.write(json.dumps(r) + "\n")
    seconds = time.perf_counter() - t0
    words = set()
    for r in rows["train"]:
        words.update(r["text"].split())
    info = {
        "format_version": FORMAT_VERSION,
        "complete": True,
        "params": p,
        "audio_paths": "relative to this directory",
        "sample_rate": SAMPLE_RATE,
        "counts": {s: len(rows[s]) for s in SPLITS},
        "hours": {s: round(sum(r["duration"] for r in rows[s]) / 3600, 4) for s in SPLITS},
        "mean_duration": {
            s: round(float(np.mean([r["duration"] for r in rows[s]])), 3) if rows[s] else 0.0 for s in SPLITS
        },
        "voices": {s: sorted({r["voice"] for r in rows[s]}) for s in SPLITS},
        "dropped_too_long": dropped,
        "distinct_train_words": len(words),
        "build_seconds": round(seconds, 2),
        "plan_seconds": round(plan_seconds, 2),
        "parent_cpu_seconds": round(time.process_time() - cpu0, 2),
        "utterances_per_second": round(sum(len(v) for v in rows.values()) / max(seconds, 1e-9), 1),
        "workers": workers,
    }
    with open(root / "corpus.json", "w") as f:
        json.dump(info, f, indent=1)
    return info


# ---------------------------------------------------------------------------------- public corpus API

_NOT_HASHED = ("workers", "overwrite", "progress")


def build_corpus(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 20000,
    n_val: int = 300,
    n_test: int = 500,
    seed: int = 0,
    noise: float = 0.0,
    snr_db: tuple[float, float] = (5.0, 30.0),
    min_words: int = 2,
    max_words: int = 12,
    rate: tuple[int, int] = (150, 210),
    pitch: tuple[int, int] = (30, 70),
    train_voices: Sequence[str] = TRAIN_VOICES,
    heldout_voices: Sequence[str] = HELDOUT_VOICES,
    heldout_fraction: float = 0.5,
    margin: tuple[float, float] = (0.05, 0.2),
    max_duration: float = 5.0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Path]:
    """Build a corpus in ``out_dir``; returns ``{"train"|"validation"|"test": manifest path}``.

    ``noise`` is the fraction of utterances given additive white/pink noise at an SNR drawn from
    ``snr_db``; ``rate`` (words per minute) and ``pitch`` (0..100) are drawn per utterance. Built in a
    temporary sibling directory and renamed into place, so ``out_dir`` is either complete or absent.
    """
    params = _params(locals())
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True)")
    _build_atomic(out, params, workers, progress, replace=overwrite)
    return manifest_paths(out)


def _params(local_vars: dict) -> dict:
    """The hashed build parameters, JSON-normalised (tuples -> lists)."""
    p = {k: local_vars[k] for k in _DEFAULTS}
    p = json.loads(json.dumps(p))
    for s in ("train_voices", "heldout_voices"):
        p[s] = list(p[s])
    if set(p["train_voices"]) & set(p["heldout_voices"]):
        raise ValueError("a held-out voice is also a training voice")
    if not 1 <= p["min_words"] <= p["max_words"]:
        raise ValueError("need 1 <= min_words <= max_words")
    if min(p["n_train"], p["n_val"], p["n_test"]) < 0 or not 0.0 <= p["noise"] <= 1.0:
        raise ValueError("split sizes must be >= 0 and noise a fraction in [0, 1]")
    if not (80 <= p["rate"][0] <= p["rate"][1] <= 450 and 0 <= p["pitch"][0] <= p["pitch"][1] <= 100):
        raise ValueError("rate must lie in 80..450 words per minute and pitch in 0..100")
    return p


def _build_atomic(out: Path, params: dict, workers: int | None, progress: bool, replace: bool) -> dict | None:
    """Build into ``.<name>.tmp-<pid>`` next to ``out`` and rename it into place; returns corpus info.

    Returns None when another process completed the same corpus first.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        info = _build_into(tmp, params, workers or _default_workers(), progress)
        if replace and out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, out)  # atomic; fails if out is a non-empty directory
            except OSError:
                if is_complete(out):
                    shutil.rmtree(tmp, ignore_errors=True)
                    return None
                raise
        return info
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_DEFAULTS = {
    k: v.default
    for k, v in inspect.signature(build_corpus).parameters.items()
    if v.kind is inspect.Parameter.KEYWORD_ONLY and k not in _NOT_HASHED
}
CORPUS_DEFAULTS = dict(_DEFAULTS)  # the corpus parameters (all hashed into the cache key) and their defaults


def corpus_key(**params) -> str:
    """Directory name for a parameter set: format version + hash of the (defaults-completed) parameters."""
    unknown = set(params) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown corpus parameters: {sorted(unknown)}")
    p = _params({**_DEFAULTS, **params})
    digest = hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:16]
    return f"v{FORMAT_VERSION}-{digest}"


def default_cache_dir() -> Path:
    """``$JAX_WHISPER_CACHE/synthetic`` or ``~/.cache/jax_whisper/synthetic``."""
    root = os.environ.get("JAX_WHISPER_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "jax_whisper"
    )
    return Path(root) / "synthetic"


def is_complete(corpus_dir: str | os.PathLike) -> bool:
    """True if ``corpus_dir`` holds a finished corpus of the current format."""
    d = Path(corpus_dir)
    try:
        info = json.loads((d / "corpus.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        info.get("complete") is True
        and info.get("format_version") == FORMAT_VERSION
        and all((d / f"{s}.jsonl").is_file() for s in SPLITS)
    )


def manifest_paths(corpus_dir: str | os.PathLike) -> dict[str, Path]:
    d = Path(corpus_dir)
    return {s: d / f"{s}.jsonl" for s in SPLITS}


def ensure_corpus(
    cache_dir: str | os.PathLike | None = None,
    *,
    workers: int | None = None,
    progress: bool = False,
    **params,
) -> dict[str, Path]:
    """The corpus for ``params`` (see :func:`build_corpus`) under ``cache_dir``, built only if missing.

    ``cache_dir`` is the directory holding corpora (default :func:`default_cache_dir`); each lives in
    ``<cache_dir>/<corpus_key(**params)>``. Returns the manifest paths like :func:`build_corpus`.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / corpus_key(**params)
    if is_complete(out):
        log.info("reusing synthetic corpus %s", out)
        return manifest_paths(out)
    _remove_stale_tmp(out)
    if out.exists():  # incomplete leftovers (should not happen with the atomic rename); rebuild
        shutil.rmtree(out)
    log.info("building synthetic corpus %s", out)
    _build_atomic(out, _params({**_DEFAULTS, **params}), workers, progress, replace=False)
    return manifest_paths(out)


def _remove_stale_tmp(out: Path) -> None:
    """Delete temporary build directories of ``out`` whose process no longer exists (killed builds)."""
    if not out.parent.is_dir():
        return
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(tmp, ignore_errors=True)


def corpus_info(corpus_dir: str | os.PathLike) -> dict:
    """The contents of ``corpus.json`` (parameters, counts, hours, build time)."""
    return json.loads((Path(corpus_dir) / "corpus.json").read_text())


def load_manifest(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``.jsonl`` manifest with ``audio`` resolved to an absolute path."""
    path = Path(path)
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                r["audio"] = str((path.parent / r["audio"]).resolve())
                rows.append(r)
    return rows
