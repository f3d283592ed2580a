"""``python -m jax_whisper ...``: the ``jax-whisper`` command."""

import sys

from jax_whisper.cli import main

sys.exit(main())
