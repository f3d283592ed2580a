"""Train Whisper from scratch with the PyTorch reference trainer (torch_reference/train.py).

Same flags, pipeline and recipe as scripts/train_flax.py: without arguments, the CPU recipe (the seed-cpu model)
on the embedded eSpeak corpus (built offline on first use), ending with the test-set WER. `--recipe seed`
starts from the original seed recipe instead; every field of jax_whisper.config.TrainConfig can be overridden
(`--batch-size 32`, `--dataset gigaspeech --subset xs`). After an interruption, `--resume --output-dir DIR`
continues from the last checkpoint. Never imports jax.
"""

from __future__ import annotations

from jax_whisper.cli.train import run


def main(argv=None, prog: str | None = None) -> int:
    return run(argv, prog, description=__doc__, trainer="torch_reference.train", name="train_torch")
