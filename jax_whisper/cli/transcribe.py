"""Transcribe audio files with a Whisper checkpoint (JAX, on device).

FILES_OR_DIRS are audio files (anything soundfile reads: wav, flac, ogg, mp3, ...) or directories, searched
recursively for such files. Audio is downmixed to mono and resampled to 16 kHz; files of any length are
transcribed window by window. Output on stdout: the text (one file), ``path: text`` lines (several files),
``--json`` one object per file ``{"file", "text", "segments", "language"}`` per line, or ``--srt`` / ``--vtt``
subtitles (one file only: a stream of several is no subtitle file). ``--output-dir DIR`` also writes, for every
input, ``DIR/<name>.<format>`` in each of ``--output-format`` (txt, json, srt, vtt, tsv, or all), each file
atomically; files found in a directory keep their sub-path under DIR. A file that cannot be read (or holds NaN
samples) gets a one-line error on stderr; the others are still transcribed, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

OUTPUT_FORMATS = ("txt", "json", "srt", "vtt", "tsv")  # jax_whisper.transcribe.OUTPUT_FORMATS, without importing jax
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf"}
SEGMENT_KEYS = ("id", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
                "no_speech_prob")


def find_inputs(inputs: list[str]) -> list[tuple[str, str]]:
    """``(file, output name)`` pairs: files as given (named by their stem), directories expanded (sorted, audio
    suffixes only; named by their path inside the directory, suffix dropped)."""
    found = []
    for item in inputs:
        if os.path.isdir(item):
            for p in sorted(p for p in Path(item).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES):
                found.append((str(p), str(p.relative_to(item).with_suffix(""))))
        else:
            found.append((item, Path(item).stem))
    return found


def find_files(inputs: list[str]) -> list[str]:
    """Files as given, directories expanded (sorted, audio suffixes only)."""
    return [f for f, _ in find_inputs(inputs)]


def temperatures(text: str) -> float | tuple[float, ...]:
    values = tuple(float(t) for t in text.split(","))
    return values[0] if len(values) == 1 else values


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="FILES_OR_DIRS")
    parser.add_argument("--model", required=True,
                        help="checkpoint path (OpenAI .pt, Hugging Face or CTranslate2 directory, this project's "
                             "formats) or a model name found in a local cache; nothing is downloaded")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per file and line")
    out.add_argument("--srt", action="store_true", help="SubRip subtitles")
    out.add_argument("--vtt", action="store_true", help="WebVTT subtitles")
    parser.add_argument("--beam-size", type=int, default=None, help="beam search with this many beams (default greedy)")
    parser.add_argument("--patience", type=float, default=None)
    parser.add_argument("--length-penalty", type=float, default=None)
    parser.add_argument("--temperature", type=temperatures, default=0.0,
                        help="a temperature, or a comma-separated fallback sequence such as 0,0.2,0.4,0.6,0.8,1")
    parser.add_argument("--best-of", type=int, default=None, help="samples per window at temperatures > 0")
    parser.add_argument("--language", default="en", help="language code or name; 'auto' detects it (multilingual)")
    parser.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")
    parser.add_argument("--without-timestamps", action="store_true", help="decode text only (one segment a window)")
    parser.add_argument("--no-condition-on-previous-text", dest="condition_on_previous_text", action="store_false")
    parser.add_argument("--initial-prompt", default=None)
    parser.add_argument("--output-dir", default=None, metavar="DIR",
                        help="also write each input's transcript to DIR/<name>.<format> (atomically)")
    parser.add_argument("--output-format", choices=[*OUTPUT_FORMATS, "all"], default="all",
                        help="what --output-dir writes (default all: txt, json, srt, vtt, tsv)")
    parser.add_argument("--batch-size", type=int, default=4, help="files decoded together")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.beam_size is not None and args.beam_size < 1):
        parser.error("--batch-size and --beam-size must be positive")

    import tqdm

    from jax_whisper.convert import load_checkpoint, resolve_model
    from jax_whisper.transcribe import to_json, to_srt, to_vtt, transcribe_many, write_outputs

    found = find_inputs(args.inputs)
    if not found:
        print("transcribe: error: no audio files found", file=sys.stderr)
        return 1
    files = [f for f, _ in found]
    if (args.srt or args.vtt) and len(files) > 1:
        print(f"transcribe: error: {len(files)} files: subtitles go to stdout for one file only; use --output-dir "
              f"DIR --output-format {'srt' if args.srt else 'vtt'} for one subtitle file per input", file=sys.stderr)
        return 2
    formats = list(OUTPUT_FORMATS) if args.output_format == "all" else [args.output_format]
    if args.output_dir is not None:
        owner: dict[str, str] = {}
        for path, name in found:
            if name in owner and owner[name] != path:
                print(f"transcribe: error: {owner[name]} and {path} would both write {args.output_dir}/{name}.*; "
                      f"transcribe them into different --output-dir", file=sys.stderr)
                return 2
            owner[name] = path
    try:
        cfg, model = load_checkpoint(resolve_model(args.model))
    except (OSError, ValueError) as e:
        print(f"transcribe: error: cannot load model {args.model!r}: {e}", file=sys.stderr)
        return 2
    try:
        results = transcribe_many(
            model, cfg, files, batch_size=args.batch_size, beam_size=args.beam_size, patience=args.patience,
            length_penalty=args.length_penalty, temperature=args.temperature, best_of=args.best_of,
            language=None if args.language.lower() == "auto" else args.language, task=args.task,
            without_timestamps=args.without_timestamps, initial_prompt=args.initial_prompt,
            condition_on_previous_text=args.condition_on_previous_text)
    except ValueError as e:  # an unknown --language, options that do not go together
        print(f"transcribe: error: {e}", file=sys.stderr)
        return 2
    failed = 0
    bar = tqdm.tqdm(total=len(files), unit="file", disable=not args.progress, file=sys.stderr)
    try:
        for (path, name), r in zip(found, results, strict=True):
            bar.update(1)
            if isinstance(r, Exception):
                failed += 1
                message = " ".join(str(r).split()) or type(r).__name__
                tqdm.tqdm.write(f"transcribe: error: {path}: {message}", file=sys.stderr)
                continue
            text = r["text"].strip()
            if args.output_dir is not None:
                result = {"text": r["text"], "segments": [{k: s[k] for k in SEGMENT_KEYS} for s in r["segments"]],
                          "language": r["language"]}
                write_outputs(result, Path(args.output_dir) / name, formats)
            if args.json:
                segments = [{k: s[k] for k in SEGMENT_KEYS} for s in r["segments"]]
                line = to_json({"file": path, "text": text, "segments": segments, "language": r["language"]})
            elif args.srt or args.vtt:
                line = (to_srt if args.srt else to_vtt)(r["segments"])
            else:
                line = text if len(files) == 1 else f"{path}: {text}"
            tqdm.tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()
    finally:
        bar.close()
    if failed:
        print(f"transcribe: {failed} of {len(files)} files failed", file=sys.stderr)
    return 1 if failed else 0


