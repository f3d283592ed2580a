"""Writing checkpoints never loses a user's files: save_checkpoint and scripts/convert.py replace only a checkpoint
of the target format (or an empty directory) unless asked to, and never the input or a directory holding it."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
from flax import nnx

from jax_whisper.config import WhisperConfig
from jax_whisper.convert import detect_format, save_checkpoint
from jax_whisper.model import Whisper

ROOT = Path(__file__).resolve().parents[1]
CFG = dataclasses.replace(WhisperConfig.preset("seed"), n_audio_ctx=8, n_audio_state=32, n_audio_head=2,
                          n_audio_layer=1, n_text_ctx=16, n_text_state=32, n_text_head=2, n_text_layer=1)


@pytest.fixture(scope="module")
def model():
    m = Whisper(CFG, rngs=nnx.Rngs(0))
    m.eval()
    return m


def _convert_cli():
    spec = importlib.util.spec_from_file_location("convert_cli", ROOT / "scripts" / "convert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("fmt", ["flax", "hf"])
def test_a_directory_of_other_files_is_not_replaced_without_overwrite(model, tmp_path, fmt):
    out = tmp_path / "v"
    out.mkdir()
    (out / "important.txt").write_text("x")
    with pytest.raises(FileExistsError, match="directory of other files"):
        save_checkpoint(model, CFG, out, format=fmt)
    assert (out / "important.txt").read_text() == "x" and list(tmp_path.iterdir()) == [out]  # no leftovers
    save_checkpoint(model, CFG, out, format=fmt, overwrite=True)  # asked for: replaced
    assert detect_format(out) == fmt and not (out / "important.txt").exists()


def test_a_checkpoint_of_the_format_and_an_empty_directory_are_replaced(model, tmp_path):
    save_checkpoint(model, CFG, tmp_path / "ckpt", format="flax")
    save_checkpoint(model, CFG, tmp_path / "ckpt", format="flax")
    (tmp_path / "empty").mkdir()
    save_checkpoint(model, CFG, tmp_path / "empty", format="hf")
    assert detect_format(tmp_path / "ckpt") == "flax" and detect_format(tmp_path / "empty") == "hf"
    with pytest.raises(FileExistsError, match="is a flax checkpoint, not a hf checkpoint"):
        save_checkpoint(model, CFG, tmp_path / "ckpt", format="hf")


def test_convert_cli_never_deletes_its_input_or_a_directory_of_other_files(model, tmp_path, capsys):
    box = tmp_path / "sandbox"
    save_checkpoint(model, CFG, box / "in.safetensors", format="torch")
    convert = _convert_cli()
    # the output is the input's own directory: refused, even with --overwrite
    assert convert([str(box / "in.safetensors"), str(box), "--to", "hf", "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds the input" in err
    assert detect_format(box / "in.safetensors") == "torch"
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "important.txt").write_text("x")
    assert convert([str(box / "in.safetensors"), str(tmp_path / "v"), "--to", "flax"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("convert: error: output") and "--overwrite" in err and err.count("\n") == 0
    assert (tmp_path / "v" / "important.txt").read_text() == "x"
    assert convert([str(box / "in.safetensors"), str(tmp_path / "v"), "--to", "flax", "--overwrite"]) == 0
    assert detect_format(tmp_path / "v") == "flax"
