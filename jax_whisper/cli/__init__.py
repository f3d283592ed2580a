"""The ``jax-whisper`` command (``python -m jax_whisper``): one subcommand per job, each the same code as the
matching ``scripts/*.py``, which stay as thin entry points for a clone that is not installed.

    jax-whisper transcribe --model PATH FILES...    jax-whisper train [--init-from PATH] ...
    jax-whisper convert IN OUT --to FORMAT          jax-whisper evaluate --checkpoint PATH ...
    jax-whisper benchmark ...                       jax-whisper compare-peers --checkpoint PATH ...
    jax-whisper train-torch ...                     jax-whisper make-synthetic ...
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module in jax_whisper.cli, what it does, process settings it needs before JAX/PyTorch start)
COMMANDS = {
    "transcribe": ("transcribe", "transcribe audio files with any Whisper checkpoint", ()),
    "train": ("train", "train in Flax, from scratch or --init-from a checkpoint", ("memory", "vectors")),
    "train-torch": ("train_torch", "train with the PyTorch reference trainer (same flags)", ("memory",)),
    "convert": ("convert", "convert a checkpoint between formats", ()),
    "evaluate": ("evaluate", "word error rate of a checkpoint on a dataset", ()),
    "benchmark": ("benchmark", "time training and transcription beside openai-whisper / faster-whisper", ()),
    "compare-peers": ("compare_peers", "transcribe a split in ours, openai-whisper and faster-whisper", ()),
    "make-synthetic": ("make_synthetic", "build the eSpeak corpus", ()),
}


def apply_settings(names) -> None:
    """The process settings a command needs (jax_whisper/runtime.py says why), before JAX or PyTorch start."""
    from jax_whisper import runtime

    if "memory" in names:
        runtime.keep_freed_memory()
    if "vectors" in names:
        runtime.wide_cpu_vectors()


def main(argv=None) -> int:
    from jax_whisper import __version__

    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: jax-whisper {" + ",".join(COMMANDS) + "} ... | --version | --help"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage + "\n\n" + "\n".join(f"  {name:<15} {doc}" for name, (_, doc, _) in COMMANDS.items())
              + "\n\n`jax-whisper COMMAND --help` for a command's flags.")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"jax-whisper {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"{usage}\njax-whisper: error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module, _, settings = COMMANDS[argv[0]]
    apply_settings(settings)
    return importlib.import_module(f"jax_whisper.cli.{module}").main(argv[1:], prog=f"jax-whisper {argv[0]}")


__all__ = ["COMMANDS", "main"]
