"""The synthetic eSpeak corpus: grammar, eSpeak wrapper, splits, files, caching and atomic builds."""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pytest
import soundfile as sf

from jax_whisper import synthetic as S
from jax_whisper.synthetic import corpus  # the builder's private pieces, patched where they live

TINY = dict(n_train=20, n_val=6, n_test=6, seed=3)
ROW_KEYS = {
    "audio": str,
    "text": str,
    "voice": str,
    "duration": float,
    "speech_start": float,
    "speech_end": float,
    "n_words": int,
    "num_samples": int,
    "id": str,
    "heldout_voice": bool,
}


def _rows(manifest) -> list[dict]:
    with open(manifest) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "corpus"
    manifests = S.build_corpus(root, workers=1, **TINY)
    return root, manifests, {s: _rows(m) for s, m in manifests.items()}


# ---------------------------------------------------------------------------------------------- grammar


def test_vocabulary_at_least_500_words_and_all_reachable():
    vocab = S.vocabulary()
    assert len(vocab) >= 500
    used = {w for s in S.generate_sentences(4000, seed=0) for w in s.split()}
    assert used <= vocab, f"words missing from vocabulary(): {sorted(used - vocab)[:20]}"
    assert len(used) >= 500
    assert len(used) >= 0.9 * len(vocab), f"unreachable: {sorted(vocab - used)[:30]}"


def test_sentences_are_plain_lower_case_words():
    for s in S.generate_sentences(500, seed=5):
        assert re.fullmatch(r"[a-z]+( [a-z]+)*", s), s


def test_generator_is_deterministic_and_seed_dependent():
    a = S.generate_sentences(50, seed=1)
    assert a == S.generate_sentences(50, seed=1)
    b = S.generate_sentences(50, seed=2)
    assert a != b
    assert len(set(a) & set(b)) < 10


def test_exact_word_count_control():
    gen = S.SentenceGenerator()
    rng = np.random.default_rng(0)
    for n in range(2, 15):
        for _ in range(5):
            assert len(gen.sentence(rng, n).split()) == n
    lengths = [len(s.split()) for s in S.generate_sentences(300, seed=4, min_words=3, max_words=6)]
    assert min(lengths) == 3 and max(lengths) == 6


def test_number_words():
    assert S.number_words(7) == ["seven"]
    assert S.number_words(13) == ["thirteen"]
    assert S.number_words(40) == ["forty"]
    assert S.number_words(342) == ["three", "hundred", "forty", "two"]
    with pytest.raises(ValueError):
        S.number_words(0)


# ---------------------------------------------------------------------------------------------- eSpeak


def test_espeak_singleton_voices_and_output():
    es = S.ESpeak()
    assert S.ESpeak() is es  # the C library is global: never initialised twice
    assert "gmw/en-US" in es.list_voices("en")
    assert {"f3", "m3", "klatt4"} <= set(es.list_variants())
    audio = es.synthesize("the quick brown fox jumps over the lazy dog", "en-us+f3", rate=175, pitch=50)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 1.5 < audio.size / S.SAMPLE_RATE < 4.5
    assert np.sqrt(np.mean(audio**2)) > 0.01
    slow = es.synthesize("the quick brown fox jumps over the lazy dog", "en-us+f3", rate=120, pitch=50)
    assert slow.size > 1.2 * audio.size  # the rate parameter is applied
    for voice in S.TRAIN_VOICES + S.HELDOUT_VOICES:
        assert es.synthesize("hello there", voice).size > 0
    with pytest.raises(ValueError):
        es.synthesize("hello", "no-such-voice")


def _median_f0(audio: np.ndarray, sr: int = S.SAMPLE_RATE) -> float:
    """Median autocorrelation pitch over loud 64 ms frames."""
    out = []
    for start in range(0, audio.size - 1024, 512):
        x = audio[start : start + 1024] - audio[start : start + 1024].mean()
        if np.sqrt(np.mean(x**2)) < 0.02:
            continue
        c = np.correlate(x, x, "full")[1023:]
        lo, hi = sr // 400, sr // 60
        k = lo + int(np.argmax(c[lo:hi]))
        if c[k] > 0.4 * c[0]:
            out.append(sr / k)
    return float(np.median(out))


def test_voices_differ_in_pitch():
    """Female and male variants and the pitch parameter must really change the voice."""
    es = S.ESpeak()
    text = "we were away a year ago"
    female, male = (_median_f0(es.synthesize(text, v, 175, 50)) for v in ("en-us+f3", "en-us+m3"))
    assert female > 1.6 * male
    assert _median_f0(es.synthesize(text, "en-us+f3", 175, 90)) > 1.15 * female


# ---------------------------------------------------------------------------------------------- corpus


def test_manifest_schema_and_layout(tiny):
    root, manifests, rows = tiny
    assert set(manifests) == {"train", "validation", "test"}
    assert [len(rows[s]) for s in ("train", "validation", "test")] == [20, 6, 6]
    info = S.corpus_info(root)
    assert info["complete"] is True and info["counts"] == {"train": 20, "validation": 6, "test": 6}
    for split, rs in rows.items():
        assert [r["id"] for r in rs] == sorted(r["id"] for r in rs)
        for r in rs:
            for k, t in ROW_KEYS.items():
                assert isinstance(r[k], t), (k, r)
            assert r["audio"] == f"{split}/{r['id']}.flac"  # relative to the corpus directory
            assert (root / r["audio"]).is_file()
            assert r["n_words"] == len(r["text"].split())
    from jax_whisper.datasets import open_manifest

    metas = [open_manifest(manifests["test"]).metadata(i) for i in range(len(rows["test"]))]
    assert [m.span for m in metas] == [(r["speech_start"], r["speech_end"]) for r in rows["test"]]
    loaded = S.load_manifest(manifests["test"])
    assert all(os.path.isabs(r["audio"]) and os.path.isfile(r["audio"]) for r in loaded)


def test_no_evaluation_sentence_in_train(tiny):
    _, _, rows = tiny
    train = {S.normalize_text(r["text"]) for r in rows["train"]}
    for split in ("validation", "test"):
        assert not train & {S.normalize_text(r["text"]) for r in rows[split]}
    assert not {r["text"] for r in rows["validation"]} & {r["text"] for r in rows["test"]}


def test_planner_keeps_splits_disjoint_even_when_sentences_repeat():
    """With 2-word sentences only, duplicates are forced; they may repeat inside a split, never across."""
    p = corpus._params({**corpus._DEFAULTS, "min_words": 2, "max_words": 2, "n_train": 400, "n_val": 50, "n_test": 50})
    planner = corpus._Planner(p)
    texts = {
        s: [planner.item(s, "en-us+m3").text for _ in range(n)]
        for s, n in (("test", 50), ("validation", 50), ("train", 400))
    }
    assert not set(texts["train"]) & (set(texts["test"]) | set(texts["validation"]))
    assert not set(texts["test"]) & set(texts["validation"])


def test_heldout_voice_in_test_not_in_train(tiny):
    _, _, rows = tiny
    train_voices = {r["voice"] for r in rows["train"]}
    assert not train_voices & set(S.HELDOUT_VOICES)
    for split in ("test", "validation"):
        voices = {r["voice"] for r in rows[split]}
        assert voices & set(S.HELDOUT_VOICES), split
        assert voices & train_voices, split  # and training voices too
        assert all(r["heldout_voice"] == (r["voice"] in S.HELDOUT_VOICES) for r in rows[split])


def test_durations_at_most_5_seconds(tiny):
    _, _, rows = tiny
    for rs in rows.values():
        for r in rs:
            assert 0.2 < r["duration"] <= 5.0


def test_flac_files_decode_to_16k_mono_not_silent(tiny):
    root, _, rows = tiny
    durations, words = [], []
    for rs in rows.values():
        for r in rs:
            info = sf.info(str(root / r["audio"]))
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
            audio, sr = sf.read(str(root / r["audio"]), dtype="float32")
            assert audio.ndim == 1 and audio.size == r["num_samples"]
            assert abs(audio.size / sr - r["duration"]) < 1e-3
            assert np.sqrt(np.mean(audio**2)) > 0.01
            assert 0.25 < np.abs(audio).max() <= 1.0
            assert np.all(audio[:400] == 0.0)  # a clean (noise-free) utterance starts with a silent margin
            # the speech times bound the sound: silence outside, the first and last loud samples at the edges
            start, end = round(r["speech_start"] * sr), round(r["speech_end"] * sr)
            assert 0.05 * sr - 1 <= start < end <= audio.size - round(0.05 * sr) + 1
            assert np.all(audio[:start] == 0.0) and np.all(audio[end:] == 0.0)
            loud = np.flatnonzero(np.abs(audio) > 0.005 * np.abs(audio).max())
            assert abs(loud[0] - start) <= 2 and abs(loud[-1] + 1 - end) <= 2
            durations.append(r["duration"])
            words.append(r["n_words"])
    # the audio belongs to the text: longer sentences take longer to say
    assert np.corrcoef(durations, words)[0, 1] > 0.7


def test_too_long_utterances_are_redrawn_not_truncated(tmp_path):
    m = S.build_corpus(
        tmp_path / "c",
        n_train=12,
        n_val=2,
        n_test=2,
        seed=1,
        min_words=8,
        max_words=12,
        max_duration=2.5,
        workers=1,
    )
    info = S.corpus_info(tmp_path / "c")
    assert info["dropped_too_long"] > 0
    assert info["counts"] == {"train": 12, "validation": 2, "test": 2}
    for path in m.values():
        for r in _rows(path):
            assert r["duration"] <= 2.5
            assert sf.info(str(tmp_path / "c" / r["audio"])).frames == r["num_samples"]


def test_noise_flag(tmp_path):
    m = S.build_corpus(
        tmp_path / "n", n_train=4, n_val=2, n_test=2, noise=1.0, snr_db=(10.0, 20.0), workers=1
    )
    for r in _rows(m["train"]):
        assert 10.0 <= r["snr_db"] <= 20.0
        audio, _ = sf.read(str(tmp_path / "n" / r["audio"]), dtype="float32")
        assert np.sqrt(np.mean(audio[:400] ** 2)) > 1e-3  # the margin carries noise now


def test_build_refuses_to_clobber(tiny, tmp_path):
    root, _, _ = tiny
    with pytest.raises(FileExistsError):
        S.build_corpus(root, workers=1, **TINY)


def test_process_pool_build_matches_in_process_plan(tmp_path):
    """The multi-process path (>= 256 utterances) renders the same plan as the in-process one.

    Only the plan (text, voice, rate, pitch) is compared: eSpeak keeps phase state across calls, so
    audio is bit-identical only for the same sequence of calls in one process.
    """
    params = dict(n_train=260, n_val=4, n_test=4, seed=9, max_words=4)
    pool = S.build_corpus(tmp_path / "pool", workers=2, **params)
    single = S.build_corpus(tmp_path / "single", workers=1, **params)
    assert S.corpus_info(tmp_path / "pool")["workers"] == 2
    keys = ("id", "text", "voice", "rate", "pitch", "seed", "audio")
    for split in S.SPLITS:
        a, b = _rows(pool[split]), _rows(single[split])
        assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
        diff = [abs(x["duration"] - y["duration"]) for x, y in zip(a, b, strict=True)]
        assert np.mean(diff) < 0.01 and max(diff) < 0.2  # measured: mean 2 ms, max 70 ms


# ---------------------------------------------------------------------------------------------- caching


def test_ensure_corpus_reuses_a_complete_corpus(tmp_path, monkeypatch):
    builds = []
    real = corpus._build_into
    monkeypatch.setattr(corpus, "_build_into", lambda *a, **k: builds.append(1) or real(*a, **k))
    m1 = S.ensure_corpus(tmp_path, workers=1, **TINY)
    assert len(builds) == 1
    root = m1["train"].parent
    assert root.parent == tmp_path and root.name == S.corpus_key(**TINY)
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    m2 = S.ensure_corpus(tmp_path, workers=1, **TINY)
    assert m2 == m1 and len(builds) == 1
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamp
    # different parameters -> a different corpus
    m3 = S.ensure_corpus(tmp_path, workers=1, **{**TINY, "seed": 4})
    assert len(builds) == 2 and m3["train"].parent != root


def test_corpus_key_includes_defaults_and_rejects_unknown():
    assert S.corpus_key() == S.corpus_key(n_train=S.CORPUS_DEFAULTS["n_train"])
    assert S.corpus_key() != S.corpus_key(noise=0.5)
    assert S.corpus_key().startswith(f"v{S.FORMAT_VERSION}-")
    with pytest.raises(TypeError):
        S.corpus_key(n_trian=5)


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_WHISPER_CACHE", str(tmp_path))
    assert S.default_cache_dir() == tmp_path / "synthetic"


def test_interrupted_build_leaves_no_complete_corpus(tmp_path, monkeypatch):
    calls = []
    real = corpus._make

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) > 10:
            raise KeyboardInterrupt  # as if the user pressed ctrl-c mid-build
        return real(*a, **k)

    monkeypatch.setattr(corpus, "_make", flaky)
    with pytest.raises(KeyboardInterrupt):
        S.ensure_corpus(tmp_path, workers=1, **TINY)
    target = tmp_path / S.corpus_key(**TINY)
    assert not target.exists() and not S.is_complete(target)
    assert list(tmp_path.iterdir()) == []  # the temporary build directory is gone too
    monkeypatch.setattr(corpus, "_make", real)
    m = S.ensure_corpus(tmp_path, workers=1, **TINY)
    assert S.is_complete(target) and len(_rows(m["train"])) == 20


def test_killed_build_leftovers_are_ignored_and_cleaned(tmp_path):
    key = S.corpus_key(**TINY)
    stale = tmp_path / f".{key}.tmp-999999999"  # no such pid: a build that was killed
    (stale / "train").mkdir(parents=True)
    (stale / "train.jsonl").write_text("")
    half = tmp_path / key  # a directory without corpus.json does not count as complete
    (half / "train").mkdir(parents=True)
    assert not S.is_complete(half)
    S.ensure_corpus(tmp_path, workers=1, **TINY)
    assert not stale.exists() and S.is_complete(half)


def test_cli_help_and_build(tmp_path):
    import subprocess

    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "make_synthetic.py")
    assert subprocess.run([sys.executable, script, "--help"], capture_output=True).returncode == 0
    out = subprocess.run(
        [
            sys.executable,
            script,
            "--out",
            str(tmp_path / "c"),
            "--n-train",
            "5",
            "--n-val",
            "2",
            "--n-test",
            "2",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "train" in out and "utterances/s" in out
    assert S.is_complete(tmp_path / "c")
