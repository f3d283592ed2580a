"""Configuration: model dimensions (``WhisperConfig``) and training runs (``TrainConfig``), frozen dataclasses with
named presets, shared by the Flax model and the PyTorch reference.

``WhisperConfig``'s field names are openai-whisper's ``ModelDimensions`` so a config converts to and from an
OpenAI checkpoint's ``dims`` without renaming. Importing this module imports neither jax nor torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache, partial
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class WhisperConfig:
    n_mels: int = 80
    n_audio_ctx: int = 1500
    n_audio_state: int = 384
    n_audio_head: int = 6
    n_audio_layer: int = 4
    n_vocab: int = 51865
    n_text_ctx: int = 448
    n_text_state: int = 384
    n_text_head: int = 6
    n_text_layer: int = 4
    dropout: float = 0.0  # on residual branches (training only)
    attn_dropout: float = 0.0  # on attention weights (training only)

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("dropout", "attn_dropout"):
                if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
                    raise ValueError(f"WhisperConfig.{f.name} must be in [0, 1), got {v!r}")
            elif not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise ValueError(f"WhisperConfig.{f.name} must be a positive int, got {v!r}")
        for kind in ("audio", "text"):
            state, head = getattr(self, f"n_{kind}_state"), getattr(self, f"n_{kind}_head")
            if state % head:
                raise ValueError(f"n_{kind}_state={state} is not divisible by n_{kind}_head={head}")
        if self.n_audio_state % 2:
            raise ValueError(f"n_audio_state={self.n_audio_state} must be even (sinusoidal positions)")

    @property
    def n_frames(self) -> int:
        """Mel frames in the model's full window (the stride-2 conv halves them)."""
        return 2 * self.n_audio_ctx

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        # openai-whisper: 99 languages, large-v3 added Cantonese (vocab 51866).
        return self.n_vocab - 51765 - int(self.is_multilingual)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> WhisperConfig:
        try:
            base = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
        return dataclasses.replace(base, **overrides)

    def dims(self) -> dict[str, int]:
        """openai-whisper's ModelDimensions as a dict (no dropout fields)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name.startswith("n_")}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WhisperConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown WhisperConfig fields {sorted(unknown)}")
        missing = {n for n in known if n.startswith("n_")} - set(d)
        if missing:
            raise ValueError(f"WhisperConfig is missing dimensions {sorted(missing)}")
        return cls(**dict(d))

    @classmethod
    def from_json(cls, s: str) -> WhisperConfig:
        return cls.from_dict(json.loads(s))


def _openai(n_state, n_head, n_layer, n_vocab, n_mels=80, n_text_layer=None):
    return WhisperConfig(
        n_mels=n_mels, n_audio_ctx=1500, n_audio_state=n_state, n_audio_head=n_head,
        n_audio_layer=n_layer, n_vocab=n_vocab, n_text_ctx=448, n_text_state=n_state,
        n_text_head=n_head, n_text_layer=n_text_layer or n_layer,
    )


PRESETS: dict[str, WhisperConfig] = {
    # The project's from-scratch model: GPT-2 vocabulary + 5 specials, 500-frame (5 s) window.
    "seed": WhisperConfig(
        n_mels=80, n_audio_ctx=250, n_audio_state=384, n_audio_head=6, n_audio_layer=6,
        n_vocab=50262, n_text_ctx=64, n_text_state=384, n_text_head=6, n_text_layer=6,
        dropout=0.1, attn_dropout=0.1,
    ),
    # The seed model's CPU default (same vocabulary, window and text context; 128 dims, 2 heads, 2+2 layers): on
    # 2 CPU cores (Zen 4) it runs ~3.3 steps/s at batch 16 and aligns between steps 1,000 and 2,000, where the seed
    # size needed 2,000-3,000 updates at a fraction of the rate (README, "Training").
    "seed-cpu": WhisperConfig(
        n_mels=80, n_audio_ctx=250, n_audio_state=128, n_audio_head=2, n_audio_layer=2,
        n_vocab=50262, n_text_ctx=64, n_text_state=128, n_text_head=2, n_text_layer=2,
    ),
    "tiny.en": _openai(384, 6, 4, 51864),
    "tiny": _openai(384, 6, 4, 51865),
    "base.en": _openai(512, 8, 6, 51864),
    "base": _openai(512, 8, 6, 51865),
    "small.en": _openai(768, 12, 12, 51864),
    "small": _openai(768, 12, 12, 51865),
    "medium.en": _openai(1024, 16, 24, 51864),
    "medium": _openai(1024, 16, 24, 51865),
    "large-v2": _openai(1280, 20, 32, 51865),
    "large-v3": _openai(1280, 20, 32, 51866, n_mels=128),
    "large-v3-turbo": _openai(1280, 20, 32, 51866, n_mels=128, n_text_layer=4),
}


def alignment_heads(cfg: WhisperConfig, name: str | None = None) -> list[list[int]]:
    """The decoder's cross-attention heads that follow the audio in time, as ``[layer, head]`` pairs (word
    timestamps; CTranslate2 and Hugging Face exports carry them).

    An OpenAI model ``name`` ("tiny.en", "large-v3", ...) whose preset has ``cfg``'s dimensions gets openai-whisper's
    measured table (read from its installed source, without importing it); anything else openai-whisper's
    default: every head of the last half of the decoder layers."""
    table = _openai_alignment_heads()
    if name in table and name in PRESETS and PRESETS[name].dims() == cfg.dims():
        import base64
        import gzip

        import numpy as np

        mask = np.frombuffer(gzip.decompress(base64.b85decode(table[name])), dtype=bool)
        mask = mask.reshape(cfg.n_text_layer, cfg.n_text_head)
        return [[int(layer), int(head)] for layer, head in np.argwhere(mask)]
    layers = range(cfg.n_text_layer // 2, cfg.n_text_layer)
    return [[layer, head] for layer in layers for head in range(cfg.n_text_head)]


def checked_alignment_heads(heads, cfg: WhisperConfig) -> tuple[tuple[int, int], ...]:
    """``heads`` as a tuple of ``(layer, head)`` pairs, each within the decoder of ``cfg``; ValueError otherwise."""
    try:
        pairs = tuple((int(layer), int(head)) for layer, head in heads)
    except (TypeError, ValueError):
        pairs = None
    if not pairs or any(not (0 <= layer < cfg.n_text_layer and 0 <= h < cfg.n_text_head) for layer, h in pairs):
        raise ValueError(f"alignment heads {heads!r}: expected [layer, head] pairs within the decoder's "
                         f"{cfg.n_text_layer} layers x {cfg.n_text_head} heads")
    return pairs


@cache
def _openai_alignment_heads() -> dict[str, str]:
    import ast
    import importlib.util

    spec = importlib.util.find_spec("whisper")
    if spec is None or spec.origin is None:
        return {}
    for node in ast.parse(Path(spec.origin).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_ALIGNMENT_HEADS":
            return ast.literal_eval(node.value)
    return {}


# ==========================================================================================================
# training runs
# ==========================================================================================================

DEFAULT_SPLITS = {  # (train, validation, test) per dataset kind
    "synthetic": ("train", "validation", "test"),
    "gigaspeech": ("train", "validation", "test"),
    "librispeech": ("train.clean.100", "validation.clean", "test.clean"),
    "manifest": ("train", "validation", "test"),
    "audiofolder": ("train", "validation", "test"),
}


class RunConfigError(ValueError):
    """A run asked for something that cannot work (flags that contradict each other or the initial checkpoint);
    the scripts print it in one line."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. The defaults are the CPU recipe for the embedded corpus (the
    ``seed-cpu`` model on a CPU, see ``scripts/train_flax.py --help`` for what it changes and why);
    ``TrainConfig.recipe("seed")`` is the original seed recipe (the seed model, batch 64, 10 epochs, lr 2e-4)."""

    # model
    init_from: str | None = field(default=None, metadata={"help": "start from this checkpoint (any format "
                                                                  "load_checkpoint reads, or a model name in a "
                                                                  "local cache): its dims and tokenizer; audio "
                                                                  "padded to its 30 s window"})
    language: str | None = field(default=None, metadata={"help": "multilingual models: the prompt's language "
                                                                 "(none: en)"})
    task: str | None = field(default=None, metadata={"help": "multilingual models: transcribe or translate "
                                                             "(none: transcribe)"})
    freeze_encoder: bool = field(default=False, metadata={"help": "train the decoder only: no encoder gradients "
                                                                  "or optimizer state"})
    timestamps: float = field(default=0.0, metadata={"help": "fraction of training utterances with known speech "
                                                             "times (the synthetic corpus's, a manifest's speech_start/"
                                                             "speech_end) trained with timestamp tokens, drawn each "
                                                             "epoch (needs a vocabulary with timestamps: --init-from)"})
    preset: str | None = field(default=None, metadata={"help": "WhisperConfig preset (none: seed-cpu on a CPU, "
                                                               "seed on an accelerator)"})
    dtype: str = field(default="float32", metadata={"help": "compute dtype: float32 or bfloat16"})
    dropout: float | None = field(default=0.0, metadata={"help": "override the preset's dropout (residual and "
                                                                 "attention; none: the preset's)"})
    model: str | None = field(default=None, metadata={"help": "WhisperConfig field overrides, e.g. "
                                                              "'n_audio_layer=4,n_text_layer=4'"})
    # data
    dataset: str = field(default="synthetic", metadata={"help": "synthetic | gigaspeech | librispeech | "
                                                                "audiofolder:DIR | manifest:FILE"})
    subset: str | None = field(default=None, metadata={"help": "GigaSpeech training subset xs|s|m|l|xl"})
    train_split: str | None = field(default=None, metadata={"help": "default per dataset"})
    val_split: str | None = None
    test_split: str | None = None
    cache_dir: str | None = field(default=None, metadata={"help": "dataset / corpus cache directory"})
    n_train: int = field(default=16000, metadata={"help": "synthetic corpus: training utterances"})
    n_val: int = 300
    n_test: int = 500
    corpus_seed: int = 0
    noise: float = field(default=0.0, metadata={"help": "synthetic corpus: fraction of noisy utterances"})
    buckets: int = field(default=4, metadata={"help": "number of length buckets (at duration quantiles)"})
    curriculum_epochs: int = field(default=1, metadata={"help": "epochs ordered short buckets first (SortaGrad)"})
    num_workers: int = field(default=0, metadata={"help": "grain worker processes (0: threads only)"})
    # optimisation
    batch_size: int = 16
    epochs: int = 2
    max_steps: int = field(default=8000, metadata={"help": "stop after this many steps (0: epochs * steps/epoch)"})
    max_lr: float = 1e-3
    warmup_steps: int = 200
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    clip_norm: float = 1.0
    label_smoothing: float = 0.0
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per step (same result, less memory)"})
    ctc_weight: float = field(default=0.3, metadata={"help": "weight of the auxiliary CTC loss (0: off)"})
    ctc_only_steps: int = field(default=500, metadata={"help": "first N steps train the encoder with the CTC loss "
                                                     "alone (the decoder is not run)"})
    seed: int = 0
    # devices and processes (jax_whisper.parallel)
    fsdp: int = field(default=1, metadata={"help": "devices that split each parameter and its optimizer state "
                                                   "(FSDP); the batch is split over all devices"})
    distributed: bool = field(default=False, metadata={"help": "join a multi-process run (jax.distributed."
                                                              "initialize; TPU pods, SLURM, Open MPI need nothing "
                                                              "else)"})
    coordinator: str | None = field(default=None, metadata={"help": "HOST:PORT of process 0 (implies "
                                                                    "--distributed)"})
    num_processes: int | None = field(default=None, metadata={"help": "processes in the run (with --coordinator)"})
    process_id: int | None = field(default=None, metadata={"help": "this process, 0..num_processes-1"})
    # evaluation, logging, checkpoints
    eval_every: int = field(default=1000, metadata={"help": "validate every N steps and at the last (0: at the end "
                                                            "of every epoch)"})
    eval_batch_size: int = 64
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    output_dir: str = "runs/seed"
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in output_dir"})
    overwrite: bool = field(default=False, metadata={"help": "start afresh in an output_dir that holds an earlier "
                                                            "run, deleting that run (without it such a directory "
                                                            "is refused unless --resume)"})
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self):
        if not 0.0 <= self.timestamps <= 1.0:
            raise RunConfigError(f"--timestamps {self.timestamps}: expected a fraction of the utterances, 0 to 1")
        if self.freeze_encoder and (self.ctc_weight or self.ctc_only_steps):
            raise RunConfigError(f"--freeze-encoder with the CTC loss (--ctc-weight {self.ctc_weight}, "
                                 f"--ctc-only-steps {self.ctc_only_steps}): a frozen encoder has nothing for CTC "
                                 f"to train; set both to 0 (--recipe finetune does)")

    @classmethod
    def recipe(cls, name: str, **overrides) -> TrainConfig:
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
        return dataclasses.replace(cls(**RECIPES[name]), **overrides)

    def ctc_weight_at(self, step: int) -> float:
        """The CTC weight of training step ``step`` (1-based): 1.0, CTC alone, for the first ``ctc_only_steps``.

        Attention decoders trained from scratch first learn only the language model. An encoder that already
        emits letter-like, monotonic features (CTC alone trains it faster, and the decoder is not run) gives the
        decoder's cross-attention something to lock onto.
        """
        return 1.0 if step <= self.ctc_only_steps else self.ctc_weight

    def for_platform(self, platform: str) -> TrainConfig:
        """This run with its preset resolved for ``platform`` ("cpu", "gpu", "tpu", "cuda", ...): an unset preset
        is ``seed-cpu`` on a CPU, where the seed model cannot align in a default run's time, else ``seed``
        (a run ``init_from`` a checkpoint has no preset: its model is the checkpoint's)."""
        if self.preset is not None or self.init_from is not None:
            return self
        return dataclasses.replace(self, preset="seed-cpu" if platform == "cpu" else "seed")

    def model_name(self) -> str:
        """What the run trains, for titles and logs: the preset and its overrides, or the initial checkpoint."""
        if self.init_from is not None:
            return "/".join(Path(self.init_from).parts[-2:]) + " (fine-tuned)"
        return f"{self.preset}" + (f" ({self.model})" if self.model else "")

    def model_config(self, initial: WhisperConfig | None = None) -> WhisperConfig:
        """The preset (unset: the CPU's, see :meth:`for_platform`) with ``model`` overrides and ``dropout``; for a
        run ``init_from`` a checkpoint, that checkpoint's dims ``initial`` with ``dropout``. A preset or model
        overrides beside ``init_from`` are refused: the checkpoint fixes the model."""
        if self.init_from is not None:
            if self.preset is not None or self.model:
                flag = "--preset" if self.preset is not None else "--model"
                raise RunConfigError(f"{flag} with --init-from {self.init_from}: the model is the checkpoint's (its "
                                     f"dims and vocabulary); drop {flag}")
            if initial is None:
                raise ValueError("a run with init_from needs the checkpoint's dims (load it first)")
            cfg = initial
        else:
            if self.language is not None or self.task is not None:
                raise RunConfigError("--language/--task set the prompt of a multilingual checkpoint: they need "
                                     "--init-from (a model trained from scratch has the seed vocabulary's English "
                                     "prompt)")
            cfg = self._preset_config()
        if self.dropout is not None:
            cfg = dataclasses.replace(cfg, dropout=float(self.dropout), attn_dropout=float(self.dropout))
        return cfg

    def _preset_config(self) -> WhisperConfig:
        cfg = WhisperConfig.preset(self.for_platform("cpu").preset)
        names = {f.name for f in fields(WhisperConfig)}
        overrides = {}
        for item in filter(None, (self.model or "").split(",")):
            key, sep, value = (p.strip() for p in item.partition("="))
            if not sep or key not in names:
                raise ValueError(f"model override {item!r}: expected NAME=VALUE with NAME one of {sorted(names)}")
            overrides[key] = type(getattr(cfg, key))(value)
        return dataclasses.replace(cfg, **overrides)  # all at once: heads and widths must agree only at the end

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


RECIPES = {
    "cpu": {},  # the defaults
    # the seed run this project started from (PyTorch, GigaSpeech xs): one step per 64 utterances, 10 epochs
    "seed": dict(preset="seed", batch_size=64, epochs=10, max_steps=0, max_lr=2e-4, warmup_steps=500, dropout=None,
                 ctc_weight=0.0, ctc_only_steps=0, curriculum_epochs=0, buckets=5, eval_every=0,
                 checkpoint_every=500, dataset="gigaspeech", subset="xs"),
    # fine-tuning a pretrained checkpoint (--init-from): a small lr after a short warmup, no dropout, no CTC head
    "finetune": dict(max_lr=1e-4, warmup_steps=50, end_lr_ratio=0.0, weight_decay=0.01, dropout=0.0, ctc_weight=0.0,
                     ctc_only_steps=0, curriculum_epochs=0, buckets=3, batch_size=16, epochs=1, max_steps=0,
                     eval_every=100, eval_batch_size=16, checkpoint_every=100),
}


def _parse_value(ftype: str, text: str):
    if text.lower() in ("none", "null") and "None" in ftype:
        return None
    if ftype.startswith("bool"):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
    if ftype.startswith("int"):
        return int(text)
    if ftype.startswith("float"):
        return float(text)
    return text


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field (``--batch-size 32``; booleans also as bare ``--resume``)."""
    parser.add_argument("--recipe", default="cpu", choices=sorted(RECIPES), help="base values before overrides")
    for f in dataclasses.fields(TrainConfig):
        ftype = str(f.type)
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "") + f" (default: {f.default})"
        if ftype.startswith("bool"):
            parser.add_argument(flag, nargs="?", const=True, default=argparse.SUPPRESS,
                                type=partial(_parse_value, ftype), help=help_)
        else:  # SUPPRESS: a flag not given is absent, so an explicit "none" (e.g. --dropout none) still overrides
            parser.add_argument(flag, default=argparse.SUPPRESS, type=partial(_parse_value, ftype), help=help_)


# what a resumed run may change: how long it runs, how often it evaluates and logs, where its files and data live
RESUMABLE = ("max_steps", "epochs", "eval_every", "eval_batch_size", "log_every", "checkpoint_every",
             "keep_checkpoints", "progress", "tensorboard", "num_workers", "cache_dir", "output_dir", "resume",
             "distributed", "coordinator", "num_processes", "process_id")


def resumed_config(stored: TrainConfig, given: Mapping[str, Any]) -> TrainConfig:
    """The stored run's configuration with the flags ``given`` alongside ``--resume`` applied: those of
    ``RESUMABLE`` may differ (more steps, say); any other that differs from the stored run is refused by name."""
    conflicts = [k for k, v in given.items() if k not in RESUMABLE and getattr(stored, k) != v]
    if conflicts:
        named = ", ".join(f"--{k.replace('_', '-')} {given[k]!r} (the run has {getattr(stored, k)!r})"
                          for k in conflicts)
        free = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE)
        raise ValueError(f"--resume continues the run stored in {stored.output_dir}: {named} would change it "
                         f"(flags a resumed run may change: {free})")
    return dataclasses.replace(stored, **{**{k: v for k, v in given.items() if k in RESUMABLE}, "resume": True})


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run the command line asks for. With ``--resume`` and a run in ``--output-dir``, the stored run's
    configuration (its model included) with the flags given applied (:func:`resumed_config`); ``--recipe`` is then
    the stored run's."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    tc = TrainConfig.recipe(args.recipe, **overrides)
    stored = Path(tc.output_dir) / "config.json"
    if tc.resume and stored.is_file():
        try:
            train = json.loads(stored.read_text())["train"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--resume: {stored} is not a run configuration ({e})") from None
        return resumed_config(TrainConfig.from_dict({**train, "output_dir": tc.output_dir}), overrides)
    return tc
