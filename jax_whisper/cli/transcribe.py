"""Transcribe audio files with a Whisper checkpoint (JAX, on device).

FILES_OR_DIRS are audio files (anything soundfile reads: wav, flac, ogg, mp3, ...) or directories, searched
recursively for such files. Audio is downmixed to mono and resampled to 16 kHz; files of any length are
transcribed window by window. Output on stdout: the text (one file), ``path: text`` lines (several files),
``--json`` one object per file ``{"file", "text", "segments", "language"}`` per line, or ``--srt`` / ``--vtt``
subtitles (one file only: a stream of several is no subtitle file). ``--output-dir DIR`` also writes, for every
input, ``DIR/<name>.<format>`` in each of ``--output-format`` (txt, json, srt, vtt, tsv, or all), each file
atomically; files found in a directory keep their sub-path under DIR. A file that cannot be read (or holds NaN
samples) gets a one-line error on stderr; the others are still transcribed, and the exit status is then 1.

``--word-timestamps`` adds ``words`` to every segment (and lets subtitles show word groups: ``--max-words-per-line``,
``--max-line-width`` with ``--max-line-count``, ``--highlight-words``); ``--chunked`` transcribes each file by
whisper-jax's batched algorithm instead of window after window, ``--vad`` by batches of the speech Silero VAD
finds (as faster-whisper's batched pipeline). Flags that cannot work together are refused in
one line (exit status 2) before the model is read.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

OUTPUT_FORMATS = ("txt", "json", "srt", "vtt", "tsv")  # jax_whisper.transcribe.OUTPUT_FORMATS, without importing jax
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf"}
SEGMENT_KEYS = ("id", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
                "no_speech_prob", "words")  # "words" with --word-timestamps
PREPEND_PUNCTUATIONS = "\"'“¿([{-"  # jax_whisper.timing's, without importing jax
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


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


def _chunked(model, cfg, files: list[str], args):
    """Each file by :func:`jax_whisper.chunked.transcribe_chunked`, its loading error yielded in its place (as
    ``transcribe_many`` does); the options are checked before the first file is read."""
    from jax_whisper.chunked import transcribe_chunked

    options = dict(chunk_batch_size=args.chunk_batch_size, beam_size=args.beam_size, patience=args.patience,
                   length_penalty=args.length_penalty, task=args.task, without_timestamps=args.without_timestamps,
                   language=None if args.language.lower() == "auto" else args.language, vad=args.vad)
    transcribe_chunked(model, cfg, np.zeros(0, np.float32), **options)  # raises ValueError for bad options

    def results():
        for f in files:
            try:
                yield transcribe_chunked(model, cfg, f, **options)
            except (OSError, ValueError, RuntimeError) as e:  # reported per file
                yield e

    return results()


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
    words = parser.add_argument_group("word timestamps (openai-whisper's)")
    words.add_argument("--word-timestamps", action="store_true",
                       help="words with start/end times from the alignment heads' cross-attention: in --json "
                            "segments, and one subtitle cue per word group in --srt/--vtt")
    words.add_argument("--prepend-punctuations", default=PREPEND_PUNCTUATIONS, metavar="CHARS",
                       help="with --word-timestamps, these marks join the next word")
    words.add_argument("--append-punctuations", default=APPEND_PUNCTUATIONS, metavar="CHARS",
                       help="with --word-timestamps, these marks join the previous word")
    words.add_argument("--highlight-words", action="store_true",
                       help="(needs --word-timestamps) subtitles underline each word as it is spoken")
    words.add_argument("--max-line-width", type=int, default=None, metavar="N",
                       help="(needs --word-timestamps) characters per subtitle line (with --max-line-count)")
    words.add_argument("--max-line-count", type=int, default=None, metavar="N",
                       help="(needs --word-timestamps) lines per subtitle cue (with --max-line-width)")
    words.add_argument("--max-words-per-line", type=int, default=None, metavar="N",
                       help="(needs --word-timestamps; no effect with --max-line-width) words per subtitle cue")
    words.add_argument("--hallucination-silence-threshold", type=float, default=None, metavar="SECONDS",
                       help="(needs --word-timestamps) skip silence longer than this around likely hallucinations")
    parser.add_argument("--clip-timestamps", default=None, metavar="START,END,...",
                        help="comma-separated start,end,start,end,... seconds of the clips to transcribe; the "
                             "last end defaults to the end of the file")
    parser.add_argument("--chunked", action="store_true",
                        help="whisper-jax's batched long-form algorithm: 30 s chunks with 5 s strides decoded "
                             "--chunk-batch-size at a time and stitched (greedy or beam, temperature 0, no prompts)")
    parser.add_argument("--vad", action="store_true",
                        help="batched over speech: Silero VAD finds it, windows of up to 30 s of it are decoded "
                             "--chunk-batch-size at a time, text only (one segment a window); silence is skipped")
    parser.add_argument("--chunk-batch-size", type=int, default=8, metavar="N",
                        help="chunks (--chunked, --vad) decoded together")
    parser.add_argument("--batch-size", type=int, default=4, help="files decoded together")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.beam_size is not None and args.beam_size < 1):
        parser.error("--batch-size and --beam-size must be positive")
    layout = {"highlight_words": args.highlight_words, "max_line_width": args.max_line_width,
              "max_line_count": args.max_line_count, "max_words_per_line": args.max_words_per_line}
    needs_words = [f"--{k.replace('_', '-')}" for k, v in [*layout.items(), ("hallucination_silence_threshold",
                   args.hallucination_silence_threshold)] if v not in (None, False)]
    if needs_words and not args.word_timestamps:
        print(f"transcribe: error: {', '.join(needs_words)} needs --word-timestamps", file=sys.stderr)
        return 2
    if args.chunked and args.vad:
        print("transcribe: error: --chunked and --vad are two ways to place the chunks; choose one", file=sys.stderr)
        return 2
    if args.chunked or args.vad:
        clash = [flag for flag, on in [("--word-timestamps", args.word_timestamps),
                                       ("--clip-timestamps", args.clip_timestamps is not None),
                                       ("--initial-prompt", args.initial_prompt is not None),
                                       ("--best-of", args.best_of is not None),
                                       ("--temperature", args.temperature not in (0, 0.0))] if on]
        if clash:
            print(f"transcribe: error: {'--vad' if args.vad else '--chunked'} does not go with {', '.join(clash)}: "
                  f"it decodes each chunk once, greedily or by beam search, at temperature 0, without prompts",
                  file=sys.stderr)
            return 2
    bad = [f"--{k.replace('_', '-')} {v}" for k, v in [*layout.items(), ("chunk_batch_size", args.chunk_batch_size)]
           if k != "highlight_words" and v is not None and v < 1]
    if bad:
        print(f"transcribe: error: {', '.join(bad)}: expected a positive number", file=sys.stderr)
        return 2

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
    if args.vad:
        from jax_whisper.vad import silero_weights

        try:
            silero_weights()
        except (ImportError, OSError, ValueError) as e:
            print(f"transcribe: error: --vad: {e}", file=sys.stderr)
            return 2
    try:
        cfg, model = load_checkpoint(resolve_model(args.model))
    except (OSError, ValueError) as e:
        print(f"transcribe: error: cannot load model {args.model!r}: {e}", file=sys.stderr)
        return 2
    try:
        if args.chunked or args.vad:
            results = _chunked(model, cfg, files, args)
        else:
            results = transcribe_many(
                model, cfg, files, batch_size=args.batch_size, beam_size=args.beam_size, patience=args.patience,
                length_penalty=args.length_penalty, temperature=args.temperature, best_of=args.best_of,
                language=None if args.language.lower() == "auto" else args.language, task=args.task,
                without_timestamps=args.without_timestamps, initial_prompt=args.initial_prompt,
                condition_on_previous_text=args.condition_on_previous_text, word_timestamps=args.word_timestamps,
                prepend_punctuations=args.prepend_punctuations, append_punctuations=args.append_punctuations,
                clip_timestamps=args.clip_timestamps,
                hallucination_silence_threshold=args.hallucination_silence_threshold)
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
            segments = [{k: s[k] for k in SEGMENT_KEYS if k in s} for s in r["segments"]]
            if args.output_dir is not None:
                result = {"text": r["text"], "segments": segments, "language": r["language"]}
                write_outputs(result, Path(args.output_dir) / name, formats, **layout)
            if args.json:
                line = to_json({"file": path, "text": text, "segments": segments, "language": r["language"]})
            elif args.srt or args.vtt:
                line = (to_srt if args.srt else to_vtt)(r["segments"], **layout)
            else:
                line = text if len(files) == 1 else f"{path}: {text}"
            tqdm.tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()
    finally:
        bar.close()
    if failed:
        print(f"transcribe: {failed} of {len(files)} files failed", file=sys.stderr)
    return 1 if failed else 0


