"""Dataset sources: local datasets built in tmp_path with the hub's exact schemas (no network)."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from jax_whisper import datasets as D

SR = 16000
ROOT = str(Path(__file__).resolve().parents[1])


def _tone(seconds: float, sr: int = SR, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def _flac_bytes(x: np.ndarray, sr: int = SR) -> bytes:
    b = io.BytesIO()
    sf.write(b, x, sr, format="FLAC")
    return b.getvalue()


def _check_audio(audio: np.ndarray, seconds: float) -> None:
    assert isinstance(audio, np.ndarray)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.shape[0] - seconds * SR) <= 2, (audio.shape, seconds)
    assert np.abs(audio).max() > 0.05


_AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _hub_dir(tmp_path, name: str, columns: dict) -> str:
    """A save_to_disk dataset whose `audio` column is Audio(decode=False) {bytes, path}."""
    import datasets

    columns = dict(columns)
    columns["audio"] = pa.array(columns["audio"], type=_AUDIO_TYPE)
    ds = datasets.Dataset(pa.table(columns)).cast_column("audio", datasets.Audio(sampling_rate=SR, decode=False))
    out = tmp_path / name
    ds.save_to_disk(str(out))
    return str(out)


# ---------------------------------------------------------------------------------------------- text


def test_gigaspeech_training_normalization():
    assert D.gigaspeech_normalize("HELLO <COMMA> WORLD <PERIOD>") == "hello, world."
    assert D.gigaspeech_normalize("IS IT <QUESTIONMARK> YES <EXCLAMATIONPOINT>") == "is it? yes!"
    assert D.gigaspeech_normalize("<COMMA> LEADING TAG") == "leading tag"
    assert D.gigaspeech_normalize("HELLO <COMMA> WORLD <PERIOD>", punctuation="drop") == "hello world"
    assert D.is_gigaspeech_garbage("<MUSIC>") and D.is_gigaspeech_garbage("SOME <NOISE> WORDS")
    assert not D.is_gigaspeech_garbage("PLAIN WORDS <COMMA>")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("UM I THINK UH IT'S <COMMA> E-COMMERCE <PERIOD>", "I THINK IT'S E COMMERCE"),
        ("state-of-the-art <UNK> stuff", "STATE OF THE ART STUFF"),
        ("MM HM AH HUH HA ER OOF HEE ACH EEE EW UHH EH yes", "YES"),
        ("<SIL> <NOISE> <MUSIC> <OTHER>", ""),
        ("hello, world. um, is it? yes!", "HELLO WORLD IS IT YES"),
        ("UMBRELLA HAS ERR", "UMBRELLA HAS ERR"),
    ],
)
def test_gigaspeech_score_normalize(text, expected):
    assert D.gigaspeech_score_normalize(text) == expected


def test_librispeech_split_mapping():
    assert D.librispeech_config_split("train.clean.100") == ("clean", "train.100")
    assert D.librispeech_config_split("train.other.500") == ("other", "train.500")
    assert D.librispeech_config_split("validation.clean") == ("clean", "validation")
    assert D.librispeech_config_split("test.other") == ("other", "test")
    with pytest.raises(ValueError):
        D.librispeech_config_split("train")


def test_decode_audio_field_bytes_path_and_stereo_44k(tmp_path):
    stereo = _tone(0.5, sr=44100, channels=2)
    p = tmp_path / "s.wav"
    sf.write(p, stereo, 44100)
    from_path = D.decode_audio_field({"bytes": None, "path": str(p)})
    from_bytes = D.decode_audio_field({"bytes": p.read_bytes(), "path": "ignored.wav"})
    _check_audio(from_path, 0.5)
    np.testing.assert_array_equal(from_path, from_bytes)
    # channels averaged: 0.75 * tone, resampled
    ref = 0.75 * _tone(0.5)
    assert np.max(np.abs(from_path[100:-100] - ref[100:-100])) < 1e-2
    with pytest.raises(ValueError):
        D.decode_audio_field({"bytes": None, "path": None})


# ---------------------------------------------------------------------------------------------- manifest


@pytest.fixture
def manifest_dir(tmp_path):
    d = tmp_path / "corpus"
    (d / "wav").mkdir(parents=True)
    sf.write(d / "wav" / "a.flac", _tone(1.0), SR)
    sf.write(d / "wav" / "b.wav", _tone(0.5, sr=44100, channels=2), 44100)
    sf.write(d / "wav" / "long.flac", _tone(3.0), SR)
    (d / "wav" / "bad.wav").write_bytes(b"RIFF\x00\x00not really a wav file at all")
    outside = tmp_path / "outside.flac"
    sf.write(outside, _tone(0.25), SR)
    rows = [
        {"audio": "wav/a.flac", "text": "  hello   there \n"},
        {"audio": "wav/b.wav", "text": "Stereo Clip", "id": "stereo"},
        {"audio": "wav/long.flac", "text": "too long by header"},
        {"audio": "wav/bad.wav", "text": "corrupt"},
        {"audio": "wav/a.flac", "text": "   "},
        {"audio": str(outside), "text": "absolute path"},
        {"audio": "wav/a.flac", "text": "declared long", "duration": 9.0},
    ]
    with open(d / "train.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return d


def test_manifest_records_filters_and_stats(manifest_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="jax_whisper.datasets"):
        src = D.open_dataset(f"manifest:{manifest_dir / 'train.jsonl'}", "ignored", max_seconds=2.0)
    assert src.stats.as_dict() == {"too_long": 2, "empty": 1, "garbage": 0, "unreadable": 1}
    assert "bad.wav" in caplog.text
    assert len(src) == 3
    recs = list(src)
    assert [r["text"] for r in recs] == ["hello there", "Stereo Clip", "absolute path"]
    assert [r["id"] for r in recs] == ["a", "stereo", "outside"]
    for r, secs in zip(recs, (1.0, 0.5, 0.25), strict=True):
        _check_audio(r["audio"], secs)
    m = src.metadata(1)
    assert m.id == "stereo" and m.duration == pytest.approx(0.5, abs=1e-3)


def test_manifest_directory_picks_split_and_no_limit_keeps_long(manifest_dir):
    src = D.open_dataset(f"manifest:{manifest_dir}", "train")  # directory -> train.jsonl; no max_seconds
    assert src.stats.too_long == 0 and len(src) == 5
    texts = [src.metadata(i).text for i in range(len(src))]
    assert "too long by header" in texts
    long_rec = src[texts.index("too long by header")]
    _check_audio(long_rec["audio"], 3.0)  # kept whole, not truncated


def test_unreadable_at_decode_time_is_skipped_and_logged(tmp_path, caplog):
    # durations declared in the manifest, so the corrupt file is only discovered when decoding
    (tmp_path / "bad.flac").write_bytes(b"fLaC garbage garbage")
    sf.write(tmp_path / "ok.flac", _tone(0.5), SR)
    rows = [
        {"audio": "bad.flac", "text": "x", "duration": 1.0},
        {"audio": "ok.flac", "text": "y", "duration": 0.5},
        {"audio": "missing.flac", "text": "z", "duration": 0.5},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = D.open_dataset(f"manifest:{tmp_path / 'm.jsonl'}", "train", probe=False)
    assert len(src) == 3
    with caplog.at_level(logging.WARNING, logger="jax_whisper.datasets"):
        assert src[0] is None
        assert src[0] is None  # counted once
        assert src[1]["text"] == "y"
        assert src[2] is None
    assert src.stats.unreadable == 2
    assert "bad.flac" in caplog.text and "missing.flac" in caplog.text
    assert [r["text"] for r in src] == ["y"]


@pytest.mark.parametrize("line, expected", [
    (b'{"audio": "a.wav", "text": "caf\xe9"}', "line 2: not UTF-8"),
    (b'{"audio": "a.wav", "text": "open', "line 2: not JSON"),
    (b'["a.wav", "text"]', "line 2: expected a JSON object"),
    (b'{"text": "no audio"}', 'line 2: no "audio" path'),
    (b'{"audio": 7, "text": "x"}', 'line 2: no "audio" path'),
    (b'{"audio": "a.wav", "text": ["a", "list"]}', 'line 2: "text" must be a string, got list'),
    (b'{"audio": "a.wav", "text": "x", "duration": "long"}', 'line 2: "duration" must be a number'),
    (b'{"audio": "a.wav", "text": "x", "duration": -1}', 'line 2: "duration" must be a number'),
    (b'{"audio": "a.wav", "text": "x", "speech_start": 0.2}', 'line 2: "speech_start" and "speech_end" must be'),
    (b'{"audio": "a.wav", "text": "x", "speech_start": 0.4, "speech_end": 0.2}', '0.4 and 0.2'),
    (b'{"audio": "a.wav", "text": "x", "duration": 1, "speech_start": 0, "speech_end": 2}', "<= duration"),
])
def test_a_malformed_manifest_line_is_an_error_naming_file_and_line(tmp_path, line, expected):
    sf.write(tmp_path / "a.wav", _tone(0.5), SR)
    (tmp_path / "m.jsonl").write_bytes(b'{"audio": "a.wav", "text": "fine"}\n' + line + b"\n")
    with pytest.raises(D.DataError) as e:
        D.open_dataset(f"manifest:{tmp_path / 'm.jsonl'}", "train")
    assert str(tmp_path / "m.jsonl") in str(e.value) and expected in str(e.value) and "\n" not in str(e.value)


def test_a_missing_manifest_and_missing_audio_say_no_such_file(tmp_path, caplog):
    with pytest.raises(D.DataError, match="no such file"):
        D.open_dataset(f"manifest:{tmp_path / 'nope.jsonl'}", "train")
    with pytest.raises(D.DataError, match="train.jsonl'?: no such file"):
        D.open_dataset(f"manifest:{tmp_path}", "train")  # a directory without the split's manifest
    sf.write(tmp_path / "a.wav", _tone(0.5), SR)
    rows = [{"audio": "gone.wav", "text": "x"}, {"audio": "a.wav", "text": "y"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="jax_whisper.datasets"):
        src = D.open_dataset(f"manifest:{tmp_path / 'm.jsonl'}", "train")  # probed: a counted skip
    assert len(src) == 1 and src.stats.unreadable == 1
    assert "gone.wav" in caplog.text and "no such file" in caplog.text and "System error" not in caplog.text


# ---------------------------------------------------------------------------------------------- audiofolder


def test_audiofolder_split_dir_and_root(tmp_path):
    root = tmp_path / "af"
    (root / "train").mkdir(parents=True)
    sf.write(root / "train" / "one.wav", _tone(0.5, sr=44100, channels=2), 44100)
    sf.write(root / "train" / "two.flac", _tone(2.5), SR)
    with open(root / "train" / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "transcription", "speaker"])
        w.writerow(["one.wav", "First  one", "s1"])
        w.writerow(["two.flac", "second", "s2"])
    src = D.open_dataset(f"audiofolder:{root}", "train", max_seconds=2.0)
    assert len(src) == 1 and src.stats.too_long == 1
    r = src[0]
    assert r["text"] == "First one" and r["id"] == "one"
    _check_audio(r["audio"], 0.5)

    flat = tmp_path / "flat"
    flat.mkdir()
    sf.write(flat / "x.flac", _tone(0.3), SR)
    (flat / "metadata.csv").write_text("file_name,sentence\nx.flac,a sentence\n")
    src = D.open_dataset(f"audiofolder:{flat}", "validation")
    assert [x["text"] for x in src] == ["a sentence"]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metadata.csv").write_text("file_name,words\nx.flac,a\n")
    with pytest.raises(ValueError, match="transcription"):
        D.open_dataset(f"audiofolder:{bad}", "train")


# ---------------------------------------------------------------------------------------------- hub schemas


def test_librispeech_hub_schema(tmp_path):
    clips = [_tone(0.5), _tone(1.5, sr=44100, channels=2), _tone(3.0)]
    hub = _hub_dir(
        tmp_path,
        "ls",
        {
            "file": [f"/x/{i}.flac" for i in range(3)],
            "audio": [
                {"bytes": _flac_bytes(clips[0]), "path": "84-121123-0000.flac"},
                {"bytes": _flac_bytes(clips[1], 44100), "path": "84-121123-0001.flac"},
                {"bytes": _flac_bytes(clips[2]), "path": "84-121123-0002.flac"},
            ],
            "text": ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES", "THE STAIRCASE GROANED"],
            "speaker_id": [84, 84, 84],
            "chapter_id": [121123, 121123, 121123],
            "id": ["84-121123-0000", "84-121123-0001", "84-121123-0002"],
        },
    )
    src = D.open_dataset("librispeech", "validation.clean", hub_path=hub, max_seconds=2.0)
    assert len(src) == 3  # durations unknown before decoding
    assert src.metadata(1) == D.ItemMeta("84-121123-0001", "but in less than five minutes", None)
    recs = list(src)
    assert [r["text"] for r in recs] == ["go do you hear", "but in less than five minutes"]
    _check_audio(recs[0]["audio"], 0.5)
    _check_audio(recs[1]["audio"], 1.5)
    assert src.stats.too_long == 1 and src[2] is None


def test_gigaspeech_hub_schema_parquet(tmp_path):
    import datasets

    texts = [
        "AS THEY'RE LEAVING <COMMA> CAN KASH PULL ZAHRA ASIDE REALLY QUICKLY <QUESTIONMARK>",
        "<MUSIC>",
        "THEY DON'T GET <NOISE> YOU",
        "WHAT IS THIS <PERIOD>",
        "THIS ONE IS FAR TOO LONG <PERIOD>",
        "<COMMA>",
    ]
    seconds = [0.5, 0.4, 0.6, 0.4, 6.0, 0.3]
    n = len(texts)
    begin = [10.0 * i for i in range(n)]
    audio = [{"bytes": _flac_bytes(_tone(s)), "path": f"POD{i}.flac"} for i, s in enumerate(seconds)]
    audio[3]["bytes"] = _flac_bytes(_tone(0.4, sr=44100, channels=2), 44100)
    table = pa.table(
        {
            "segment_id": [f"POD0000000{i}_S0000000{i}" for i in range(n)],
            "speaker": ["N/A"] * n,
            "text": texts,
            "audio": pa.array(audio, type=_AUDIO_TYPE),
            "begin_time": pa.array(begin, type=pa.float32()),
            "end_time": pa.array([b + s for b, s in zip(begin, seconds, strict=True)], type=pa.float32()),
            "audio_id": ["POD0000000001"] * n,
            "title": ["a podcast"] * n,
            "url": ["https://example.invalid"] * n,
            "source": pa.array([2] * n, type=pa.int64()),
            "category": pa.array([24] * n, type=pa.int64()),
            "original_full_path": ["audio/podcast/P0000/POD0000000001.opus"] * n,
        }
    )
    pq_path = tmp_path / "gs.parquet"
    ds = datasets.Dataset(table).cast_column("audio", datasets.Audio(sampling_rate=SR, decode=False))
    ds.to_parquet(str(pq_path))

    src = D.open_dataset(
        "gigaspeech:xs", "train", data_files=str(pq_path), cache_dir=str(tmp_path / "hf"), max_seconds=5.0
    )
    assert src.stats.as_dict() == {"too_long": 1, "empty": 1, "garbage": 2, "unreadable": 0}
    assert len(src) == 2
    assert src.metadata(0).duration == pytest.approx(0.5, abs=1e-4)
    recs = list(src)
    assert [r["text"] for r in recs] == [
        "as they're leaving, can kash pull zahra aside really quickly?",
        "what is this.",
    ]
    assert recs[1]["id"] == "POD00000003_S00000003"
    _check_audio(recs[0]["audio"], 0.5)
    _check_audio(recs[1]["audio"], 0.4)

    dropped = D.open_dataset(
        "gigaspeech", "dev", subset="xs", data_files=str(pq_path), cache_dir=str(tmp_path / "hf"), punctuation="drop"
    )
    assert dropped.metadata(0).text == "as they're leaving can kash pull zahra aside really quickly"
    assert dropped.stats.too_long == 0 and len(dropped) == 3


def test_unknown_spec_and_module_imports_no_jax_or_torch():
    with pytest.raises(ValueError, match="unknown dataset spec"):
        D.open_dataset("nope", "train")
    import subprocess

    code = "import sys, jax_whisper.datasets; print('jax' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------- synthetic


def test_synthetic_tiny_corpus(tmp_path):
    params = dict(n_train=4, n_val=2, n_test=2, seed=11, workers=1)
    src = D.open_dataset("synthetic", "validation", cache_dir=tmp_path / "cache", **params)
    assert len(src) == 2 and src.stats.total == 0
    r = src[0]
    assert r["text"] == src.metadata(0).text and r["text"]
    assert r["audio"].dtype == np.float32 and r["audio"].ndim == 1
    assert abs(r["audio"].shape[0] / SR - src.metadata(0).duration) < 0.01
    train = D.open_dataset("synthetic", "train", cache_dir=tmp_path / "cache", **params)
    assert len(train) == 4
    durations = [d for d in train.durations() if d is not None]
    limit = sorted(durations)[1] + 1e-6  # keeps the two shortest
    short = D.open_dataset("synthetic", "train", cache_dir=tmp_path / "cache", max_seconds=limit, **params)
    n_short = sum(d <= limit for d in durations)
    assert 2 <= n_short < 4
    assert len(short) == n_short and short.stats.too_long == 4 - n_short
    assert all(len(r["audio"]) <= limit * SR for r in short)


def test_manifest_groups_from_group_or_heldout_voice(tmp_path):
    """Evaluation scores each group apart: a row's ``group``, else the synthetic corpus's ``heldout_voice``."""
    sf.write(tmp_path / "a.wav", _tone(0.5), SR)
    rows = [{"audio": "a.wav", "text": "one", "group": "noisy"}, {"audio": "a.wav", "text": "two"},
            {"audio": "a.wav", "text": "three", "heldout_voice": True},
            {"audio": "a.wav", "text": "four", "heldout_voice": False}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = D.open_dataset(f"manifest:{tmp_path / 'm.jsonl'}", "test")
    assert [src.metadata(i).group for i in range(4)] == ["noisy", None, "heldout_voices", "train_voices"]
    synthetic = D.open_dataset("synthetic", "validation", cache_dir=tmp_path / "cache", n_train=2, n_val=4, n_test=2,
                               seed=5, workers=1)
    assert sorted(synthetic.metadata(i).group for i in range(4)) == ["heldout_voices"] * 2 + ["train_voices"] * 2
