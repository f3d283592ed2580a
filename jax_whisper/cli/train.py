"""Train Whisper from scratch in Flax.

Without arguments: the CPU recipe on the embedded eSpeak corpus (built offline on first use: 16,000 training
utterances by 71 voices, validation and test of unseen sentences, half of them by 2 held-out voices), ending with
the test WER (held-out and training voices apart) and a picture of the run, runs/seed/curves.png.

The CPU recipe (--recipe cpu, the default) differs from the seed run (--recipe seed: batch 64, lr 2e-4, 10 epochs,
dropout 0.1, GigaSpeech xs) because on 2 CPU cores what decides the result is how many updates an hour buys and how
soon the decoder aligns with the audio: on a CPU the model is the seed-cpu preset (the seed model's vocabulary and
5 s window; 128 dims, 2 heads, 2+2 layers; on an accelerator the seed model itself); batch 16, lr 1e-3 with 200
warmup steps, cosine to 0 over 8,000 steps; no dropout; 4 length buckets, the first epoch short to long; the encoder
with a CTC head alone for the first 500 steps, then CTC at weight 0.3 beside the token loss; validation every
1,000 steps. Every field of jax_whisper.config.TrainConfig is a flag (`--batch-size 32`, `--preset seed`,
`--dataset gigaspeech --subset xs`). After an interruption, `--resume --output-dir DIR` continues exactly where the
last checkpoint left off.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv=None, prog: str | None = None) -> int:
    return run(argv, prog, description=__doc__, trainer="jax_whisper.train", name="train_flax")


def run(argv, prog: str | None, *, description: str, trainer: str, name: str) -> int:
    """Parse the TrainConfig flags and train with ``trainer``'s ``train`` (the Flax or the PyTorch trainer);
    refusals (a directory in use, unusable data, flags that cannot work) end in one line prefixed ``name``."""
    import importlib

    from jax_whisper.config import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    try:
        tc = config_from_args(parser.parse_args(argv))
    except ValueError as e:  # --resume with flags that would change the stored run
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # orbax and absl are chatty at INFO
    logging.getLogger("jax_whisper").setLevel(logging.INFO)
    from jax_whisper.config import RunConfigError
    from jax_whisper.datasets import DataError
    from jax_whisper.runlog import RunDirectoryError

    try:
        results = importlib.import_module(trainer).train(tc)
    except (RunDirectoryError, DataError, RunConfigError) as e:  # directory in use, unusable data, bad flags: one line
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    return 0 if results["status"] == "completed" else 1
