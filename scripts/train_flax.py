#!/usr/bin/env python
"""Train Whisper from scratch in Flax.

Without arguments: the `seed` model on the embedded eSpeak corpus (built offline on first use) with the CPU
recipe, ending with the test-set WER. `--recipe seed` starts from the original seed recipe instead; every
field of jax_whisper.train.TrainConfig can be overridden (`--batch-size 32`, `--dataset gigaspeech --subset xs`).
After an interruption, `--resume --output-dir DIR` continues exactly where the last checkpoint left off.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing


def main(argv=None) -> int:
    from jax_whisper.config import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    tc = config_from_args(parser.parse_args(argv))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # orbax and absl are chatty at INFO
    logging.getLogger("jax_whisper").setLevel(logging.INFO)
    from jax_whisper.train import train

    results = train(tc)
    return 0 if results["status"] == "completed" else 1


if __name__ == "__main__":
    from jax_whisper.runtime import keep_freed_memory, wide_cpu_vectors

    keep_freed_memory()  # before JAX/PyTorch start their threads (jax_whisper/runtime.py says why)
    wide_cpu_vectors()  # before JAX creates its CPU backend
    sys.exit(main())
