"""Train Whisper from scratch with the PyTorch reference trainer (torch_reference/train.py).

Same flags, pipeline and recipe as scripts/train_flax.py: without arguments, the CPU recipe (the seed-cpu model)
on the embedded eSpeak corpus (built offline on first use), ending with the test-set WER. `--recipe seed`
starts from the original seed recipe instead; every field of jax_whisper.config.TrainConfig can be overridden
(`--batch-size 32`, `--dataset gigaspeech --subset xs`). After an interruption, `--resume --output-dir DIR`
continues from the last checkpoint. Never imports jax.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv=None, prog: str | None = None) -> int:
    from jax_whisper.config import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    try:
        tc = config_from_args(parser.parse_args(argv))
    except ValueError as e:  # --resume with flags that would change the stored run
        print(f"train_torch: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("jax_whisper").setLevel(logging.INFO)
    from jax_whisper.config import RunConfigError
    from jax_whisper.datasets import DataError
    from jax_whisper.runlog import RunDirectoryError
    from torch_reference.train import train

    try:
        results = train(tc)
    except (RunDirectoryError, DataError, RunConfigError) as e:  # directory in use, unusable data, bad flags: one line
        print(f"train_torch: error: {e}", file=sys.stderr)
        return 2
    return 0 if results["status"] == "completed" else 1


