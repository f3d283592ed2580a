#!/usr/bin/env python
"""Convert a Whisper checkpoint between formats: the input format is inferred, the output is named by --to."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("input", type=Path, help="checkpoint to read (format inferred)")
    parser.add_argument("output", type=Path, help="where to write (a directory for flax, a .safetensors file "
                                                  "for torch)")
    parser.add_argument("--to", required=True, choices=["flax", "torch"], help="output format")
    args = parser.parse_args(argv)

    from jax_whisper.convert import detect_format, load_checkpoint, num_params, save_checkpoint

    try:
        fmt = detect_format(args.input)
        cfg, model = load_checkpoint(args.input)
        save_checkpoint(model, cfg, args.output, format=args.to)
    except (OSError, ValueError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    print(f"read {args.input} ({fmt}), wrote {args.output} ({args.to})")
    print(cfg.to_json())
    print(f"parameters: {num_params(model):,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
