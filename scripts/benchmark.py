#!/usr/bin/env python
"""Speed benchmark (issue 5): the Flax train step against the PyTorch reference (eager and torch.compile), and

`jax-whisper benchmark` after `pip install -e .`; the code is jax_whisper/cli/benchmark.py, `--help` tells the rest.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from jax_whisper.cli.benchmark import main  # noqa: E402

if __name__ == "__main__":
    from jax_whisper.cli import COMMANDS, apply_settings

    apply_settings(COMMANDS["benchmark"][2])  # before JAX or PyTorch start (jax_whisper/runtime.py)
    sys.exit(main())
