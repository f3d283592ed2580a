"""Word error rate of a checkpoint on a dataset (greedy decoding).

The checkpoint may be a training run directory (its best checkpoint), one training checkpoint, or any format
scripts/convert.py reads. Datasets as in training: synthetic, gigaspeech[:SUBSET], librispeech,
audiofolder:DIR, manifest:FILE. The last line printed is `WER: X.X%`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--dataset", default=None,
                        help="default: a training run's own dataset (and its evaluation plan), else synthetic")
    parser.add_argument("--split", default="test")
    parser.add_argument("--subset", default=None, help="GigaSpeech subset")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: a training run's evaluation batch size, else 32")
    parser.add_argument("--scoring", choices=["whisper", "gigaspeech", "none"], default=None,
                        help="text normalisation (default: gigaspeech for GigaSpeech, else whisper)")
    parser.add_argument("--full-window", action=argparse.BooleanOptionalAction, default=None,
                        help="pad every utterance to the model window (default: only for 30 s models)")
    parser.add_argument("--json", type=Path, default=None, help="write metrics and every transcript here")
    args = parser.parse_args(argv)

    from jax_whisper.evaluate import evaluate_checkpoint
    from jax_whisper.runlog import write_json_atomic

    kw = {"subset": args.subset} if args.subset else {}
    try:
        r = evaluate_checkpoint(args.checkpoint, args.dataset, args.split, cache_dir=args.cache_dir,
                                batch_size=args.batch_size, full_window=args.full_window, scoring=args.scoring,
                                dataset_kw=kw)
    except (OSError, ValueError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        write_json_atomic(args.json, r)
    print(f"{r['n']} utterances, {r['words']} words: {r['substitutions']} substitutions, {r['deletions']} "
          f"deletions, {r['insertions']} insertions ({r['scoring']} scoring)")
    groups = [f"{k[4:].replace('_', ' ')} {v:.1f}%" for k, v in r.items() if k.startswith("wer_")]
    if groups:
        print("WER of " + ", ".join(groups))
    print(f"WER: {r['wer']:.1f}%")
    return 0


