#!/usr/bin/env python
"""Convert a Whisper checkpoint between formats. The input format is recognised from the files: this project's

`jax-whisper convert` after `pip install -e .`; the code is jax_whisper/cli/convert.py, `--help` tells the rest.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from jax_whisper.cli.convert import main  # noqa: E402

if __name__ == "__main__":
    from jax_whisper.cli import COMMANDS, apply_settings

    apply_settings(COMMANDS["convert"][2])  # before JAX or PyTorch start (jax_whisper/runtime.py)
    sys.exit(main())
