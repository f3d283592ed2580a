"""Convert a Whisper checkpoint between formats. The input format is recognised from the files: this project's
Flax directory or torch .safetensors, a training run, an OpenAI whisper .pt, a Hugging Face transformers
directory, or a CTranslate2 / faster-whisper directory (a name found in a local cache also works; nothing is
downloaded). The output format is named by --to."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

OUTPUTS = {"flax": "an orbax directory", "torch": "a .safetensors file", "openai": "a .pt file for "
           "whisper.load_model", "hf": "a directory for transformers' from_pretrained",
           "ctranslate2": "a directory for faster-whisper / ctranslate2.models.Whisper"}


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("input", help="checkpoint to read (path, or a model name in a local cache)")
    parser.add_argument("output", type=Path, help="where to write: " + "; ".join(f"{k}: {v}"
                                                                                for k, v in OUTPUTS.items()))
    parser.add_argument("--to", required=True, choices=list(OUTPUTS), help="output format")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output that is not a checkpoint of the --to format (an existing "
                             "checkpoint of that format is replaced anyway; the input never is)")
    parser.add_argument("--quantization", default=None, metavar="TYPE",
                        help="--to ctranslate2: weight type, as ctranslate2's converter: float32 (default), float16, "
                             "bfloat16, int8, int8_float32, int8_float16, int8_bfloat16, int16")
    args = parser.parse_args(argv)

    from jax_whisper.convert import (
        checkpoint_alignment_heads,
        detect_format,
        load_checkpoint,
        num_params,
        resolve_model,
        save_checkpoint,
    )

    try:
        source = resolve_model(args.input)
        fmt = detect_format(source)
        cfg, model = load_checkpoint(source)
        heads = checkpoint_alignment_heads(source, cfg)  # a pretrained model's alignment heads go with it
        save_checkpoint(model, cfg, args.output, format=args.to, overwrite=args.overwrite, inputs=(source,),
                        heads=heads, quantization=args.quantization)
    except (OSError, ValueError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    print(f"read {source} ({fmt}), wrote {args.output} ({args.to}"
          + (f", {args.quantization}" if args.quantization else "") + ")")
    print(cfg.to_json())
    print(f"parameters: {num_params(model):,}")
    return 0


