"""Does a model deploy? Export a checkpoint to OpenAI .pt and CTranslate2, transcribe a dataset split greedily with
ours, openai-whisper and faster-whisper (the same 16 kHz arrays; temperature 0, no previous-text prompt), and print
how many transcripts are identical and each runtime's WER and time.

The checkpoint may be a training run directory (its best checkpoint, its own dataset and language) or anything
scripts/convert.py reads, with an OpenAI vocabulary (faster-whisper cannot run the seed vocabulary).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--dataset", default=None, help="default: a training run's own dataset, else synthetic")
    parser.add_argument("--split", default="test")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--limit", type=int, default=None, help="only the split's first N utterances")
    parser.add_argument("--batch-size", type=int, default=8, help="files ours decodes together")
    parser.add_argument("--json", type=Path, default=None, help="write the figures and every transcript here")
    args = parser.parse_args(argv)

    from jax_whisper.peers import compare_with_peers
    from jax_whisper.runlog import write_json_atomic

    try:
        r = compare_with_peers(args.checkpoint, args.dataset, args.split, cache_dir=args.cache_dir, limit=args.limit,
                               batch_size=args.batch_size)
    except (OSError, ValueError) as e:
        print(f"compare_peers: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        write_json_atomic(args.json, r)
    for name in ("ours", "openai-whisper", "faster-whisper"):
        groups = ", ".join(f"{k[4:].replace('_', ' ')} {v:.2f}%" for k, v in r[name].items() if k.startswith("wer_"))
        print(f"{name}: WER {r[name]['wer']:.2f}%" + (f" ({groups})" if groups else "")
              + f", {r['seconds'][name]:.1f} s")
    same = r["identical"]
    print(f"identical to ours: openai-whisper {same['openai-whisper']}/{r['n']}, faster-whisper "
          f"{same['faster-whisper']}/{r['n']}, all three {same['all']}/{r['n']}")
    return 0


