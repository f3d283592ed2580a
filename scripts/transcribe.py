#!/usr/bin/env python
"""Transcribe audio files with a Whisper checkpoint (JAX, on device).

`jax-whisper transcribe` after `pip install -e .`; the code is jax_whisper/cli/transcribe.py, `--help` tells the rest.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from jax_whisper.cli.transcribe import main  # noqa: E402

if __name__ == "__main__":
    from jax_whisper.cli import COMMANDS, apply_settings

    apply_settings(COMMANDS["transcribe"][2])  # before JAX or PyTorch start (jax_whisper/runtime.py)
    sys.exit(main())
