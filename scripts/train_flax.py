#!/usr/bin/env python
"""Train Whisper in Flax. For now a short smoke run of the seed model on a small eSpeak corpus; the full
trainer (grain pipeline, checkpoints, validation WER) arrives with the training issue."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-utterances", type=int, default=64, help="size of the eSpeak training corpus")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the corpus is built and kept")
    args = parser.parse_args(argv)

    from jax_whisper.train import smoke_run

    losses = smoke_run(preset=args.preset, steps=args.steps, batch_size=args.batch_size,
                       n_utterances=args.n_utterances, max_lr=args.lr, seed=args.seed, cache_dir=args.cache_dir)
    k = max(1, len(losses) // 5)
    print(f"mean loss: first {k} steps {sum(losses[:k]) / k:.3f}, last {k} steps {sum(losses[-k:]) / k:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
