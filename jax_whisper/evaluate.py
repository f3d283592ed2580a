"""Evaluation: batched greedy decoding under ``jit``, token -> text, word error rate, and the loop that ties them.

* :func:`greedy_decode` runs the prompt through the decoder once and then one token per iteration of a
  ``lax.while_loop`` over the fixed-size key/value cache (the loop of :mod:`jax_whisper.decoding`), so a batch
  shape compiles once and the loop stops as soon as every row has emitted ``eot``.
* :func:`decode_texts` turns its output into strings.
* :func:`jax_whisper.scoring.word_error_rate` (re-exported here) scores hypotheses against references.
* :func:`transcribe_batches` runs the three over the data pipeline's batches (``jax_whisper.pipeline``'s format).

The model must be in eval mode (``model.eval()``): dropout would make decoding random, and its RNG cannot
advance inside the decoding loop. :func:`greedy_decode` raises if it finds active dropout.
Full Whisper decoding (timestamps, beam search, temperature fallback) is :mod:`jax_whisper.decoding`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from jax import Array

from jax_whisper.config import WhisperConfig
from jax_whisper.decoding import Prepared, embed_audio, greedy_tokens, prepare
from jax_whisper.scoring import SCORINGS, scoring_for, word_error_rate
from jax_whisper.tokenizer import Tokenizer


def greedy_decode(model: nnx.Module | Prepared, mel: Array | np.ndarray, prompt: Sequence[int], *, eot: int,
                  max_tokens: int, suppress: Iterable[int] | None = None) -> Array:
    """Batched greedy (argmax) decoding with the key/value cache; returns ``(B, max_tokens)`` int32 tokens.

    ``mel``: (B, n_mels, frames) log-mel, frames even and at most ``2 * n_audio_ctx``. ``prompt``: the decoder
    prefix (e.g. ``tokenizer.sot_sequence_including_notimestamps``), shared by all rows. ``suppress``: token
    ids never emitted (e.g. the special tokens other than ``eot``). A row's tokens after its first ``eot`` are
    ``eot``. Decoding stops when every row has emitted ``eot``, after ``max_tokens`` tokens, or when the text
    context is full (at most ``n_text_ctx - len(prompt) + 1`` tokens; a row cut there is padded with ``eot``
    too, so it looks finished).

    The loop is :func:`jax_whisper.decoding.greedy_tokens` (no timestamp rules, no blank suppression): compiled
    once per (batch shape, eot, max_tokens); the prompt and suppressed ids are data. The model must be in eval
    mode (``model.eval()``); active dropout raises ValueError.
    """
    prompt = tuple(int(t) for t in prompt)
    suppress = tuple(sorted({int(t) for t in suppress or ()}))
    model = prepare(model)
    n_ctx, n_vocab = model.cfg.n_text_ctx, model.cfg.n_vocab
    if not 0 < len(prompt) <= n_ctx:
        raise ValueError(f"prompt must hold 1..{n_ctx} (n_text_ctx) tokens, got {len(prompt)}")
    if not (isinstance(max_tokens, int | np.integer) and max_tokens >= 1):
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if int(eot) in suppress:
        raise ValueError(f"suppress contains eot ({eot}): no row could ever finish")
    if not 0 <= eot < n_vocab or any(not 0 <= t < n_vocab for t in suppress):
        raise ValueError(f"eot {eot} and suppress ids must be in [0, {n_vocab}) (the model's vocabulary)")
    tokens, _ = greedy_tokens(model, embed_audio(model, mel), prompt, eot=int(eot), max_tokens=int(max_tokens),
                              suppress=suppress)
    return tokens


def decode_texts(tokenizer: Tokenizer, tokens: Array | np.ndarray) -> list[str]:
    """Each row of ``tokens`` cut at its first ``eot``, special tokens (ids >= eot) dropped, decoded, stripped."""
    return tokenizer.decode_batch(np.asarray(tokens))


# ==========================================================================================================
# Evaluation loop
# ==========================================================================================================


def transcribe_batches(model: nnx.Module, cfg: WhisperConfig, tokenizer: Tokenizer,
                       batches: Iterable[Mapping[str, Any]], *, max_tokens: int | None = None,
                       log_mel: Callable[[np.ndarray], Array] | None = None,
                       to_host: Callable[[Array], np.ndarray] = np.asarray,
                       features: Callable[[int, Mapping[str, Any]], Array] | None = None) -> list[dict[str, str]]:
    """Greedy transcripts of the data pipeline's batches: ``[{"id", "reference", "hypothesis"}]`` for the rows
    with ``valid`` True, in batch order. The model must be in eval mode.

    A batch holds ``audio`` (B, S) float32 16 kHz samples (zero-padded), ``valid`` (B,) bool (False marks
    filler rows, which are decoded with the rest, to keep shapes fixed, and then dropped; all rows count as
    valid if the key is missing), ``text`` and ``id`` (lists of B strings); other keys are ignored.

    The log-mel is ``log_mel(audio)``, by default ``log_mel_spectrogram(audio, n_mels=cfg.n_mels)``:
    ``S // 160`` frames, and if that is odd the last frame is dropped (the conv stem has stride 2; dropping,
    not padding, like the frontend's own trailing frame). OpenAI checkpoints were trained on 30 s windows
    only: for them pass e.g. ``log_mel=lambda a: log_mel_spectrogram(a, 80, padding=480000 - a.shape[-1])``.
    ``to_host`` brings the decoded tokens back as this batch's rows (for a batch sharded over several processes,
    :func:`jax_whisper.parallel.local_rows`). Decoding prompts with
    ``tokenizer.sot_sequence_including_notimestamps`` and suppresses every special token but ``eot``;
    ``max_tokens`` defaults to all the text context can hold. Each distinct ``(B, S)`` compiles once.
    ``features(k, batch)``, if given, returns batch ``k``'s encoder output instead (a caller that has already run
    the encoder on it, e.g. for the teacher-forced loss, does not run it twice).
    """
    if log_mel is None:
        from jax_whisper.audio import log_mel_spectrogram

        log_mel = functools.partial(log_mel_spectrogram, n_mels=cfg.n_mels)
    prompt = tokenizer.sot_sequence_including_notimestamps
    eot = tokenizer.eot
    suppress = tuple(t for t in range(eot + 1, cfg.n_vocab))  # specials and timestamps all follow eot
    if max_tokens is None:
        max_tokens = cfg.n_text_ctx - len(prompt) + 1

    results = []
    model = prepare(model)  # split once for all batches
    for k, batch in enumerate(batches):
        audio = np.asarray(batch["audio"], np.float32)
        if audio.ndim != 2:
            raise ValueError(f"batch {k}: audio must be (batch, samples), got shape {audio.shape}")
        n = audio.shape[0]
        valid = np.asarray(batch["valid"], bool) if "valid" in batch else np.ones(n, bool)
        texts, ids = list(batch["text"]), list(batch["id"])
        if not (valid.shape == (n,) and len(texts) == n and len(ids) == n):
            raise ValueError(f"batch {k}: {n} audio rows but valid {valid.shape}, {len(texts)} texts, "
                             f"{len(ids)} ids")
        if features is None:
            mel = log_mel(audio)
            mel = mel[..., : mel.shape[-1] - mel.shape[-1] % 2]
            tokens = greedy_decode(model, mel, prompt, eot=eot, max_tokens=max_tokens, suppress=suppress)
        else:
            tokens, _ = greedy_tokens(model, features(k, batch), prompt, eot=eot, max_tokens=max_tokens,
                                      suppress=suppress)
        tokens = to_host(tokens)
        hypotheses = decode_texts(tokenizer, tokens)
        results += [{"id": ids[r], "reference": texts[r], "hypothesis": hypotheses[r]}
                    for r in range(n) if valid[r]]
    return results


# ==========================================================================================================
# A checkpoint on a dataset
# ==========================================================================================================


def resolve_run(checkpoint, log: Callable[[str], None] = print) -> tuple[Any, Any]:
    """``(checkpoint, run)``: for a training run directory (or one of its checkpoints) the step directory to load
    (its best, else the latest periodic one, said in ``log``) and the run's ``TrainConfig``; else ``checkpoint``
    as given and None. Resolved once, so loading and planning read the same step."""
    from jax_whisper.config import TrainConfig
    from jax_whisper.convert import detect_format, training_checkpoint

    if detect_format(checkpoint) != "flax-train":
        return checkpoint, None
    given, checkpoint = Path(checkpoint), training_checkpoint(checkpoint)
    if checkpoint.parent.name == "checkpoints" and checkpoint.parent.parent == given:
        log(f"{given}: no best/ checkpoint; evaluating the latest periodic one, step {checkpoint.name} ({checkpoint})")
    meta = json.loads((checkpoint / "meta" / "metadata").read_text())
    return checkpoint, TrainConfig.from_dict(meta["train_config"])


def evaluate_checkpoint(checkpoint, dataset: str | None = None, split: str = "test", *, cache_dir=None,
                        batch_size: int | None = None, n_buckets: int = 5, full_window: bool | None = None,
                        scoring: str | None = None, dataset_kw: Mapping[str, Any] | None = None,
                        log: Callable[[str], None] = print) -> dict:
    """Greedy-decode every utterance of ``dataset``/``split`` with the model at ``checkpoint`` and score it.

    A training checkpoint (a run directory: its best checkpoint) evaluated on its own dataset (``dataset`` None or
    the run's) uses the run's own evaluation plan: its corpus, its length buckets and evaluation batch size, so the
    scores equal those the run logged. Otherwise audio is padded to length buckets at the split's duration
    quantiles unless ``full_window`` (default: for models with OpenAI's 30 s window, which they were trained on
    exclusively); ``dataset`` defaults to ``synthetic``. ``scoring`` defaults to ``"gigaspeech"`` for GigaSpeech,
    else ``"whisper"``. Returns ``wer`` and the counts of :func:`word_error_rate`, ``wer_<group>`` for each scoring
    group (the synthetic corpus's ``heldout_voices`` / ``train_voices``), the drops, ``checkpoint`` (the one
    evaluated) and ``rows`` (id, reference, hypothesis) in dataset order within each bucket.
    """
    from jax_whisper.convert import load_checkpoint
    from jax_whisper.datasets import _SPLIT_ALIASES, SAMPLE_RATE, open_dataset
    from jax_whisper.loop import run_tokenizer
    from jax_whisper.pipeline import HOP_LENGTH, Plan, iterate_eval, open_splits, quantile_buckets, run_plans
    from jax_whisper.scoring import group_wers
    from jax_whisper.tokenizer import get_tokenizer

    checkpoint, run = resolve_run(checkpoint, log)
    cfg, model = load_checkpoint(checkpoint)
    # a run's own prompt (a fine-tuned multilingual model's --language / --task), else the model's default
    tokenizer = run_tokenizer(run, cfg) if run is not None else get_tokenizer(cfg)
    if run is not None and dataset not in (None, run.dataset):
        run = None
    dataset = dataset or (run.dataset if run else "synthetic")
    scoring = scoring or scoring_for(dataset)
    if run is not None and full_window is None:
        run = dataclasses.replace(run, cache_dir=cache_dir or run.cache_dir, progress=False,
                                  eval_batch_size=batch_size or run.eval_batch_size)
        sources = open_splits(run, cfg)
        split = _SPLIT_ALIASES.get(split, split)
        if split not in sources:
            raise ValueError(f"split {split!r}: a training run's dataset has the splits {sorted(sources)}")
        plan, source = run_plans(run, cfg, tokenizer, sources)[split], sources[split]
        log(f"{source.name}: the run's evaluation plan (buckets {plan.buckets}, batch {run.eval_batch_size})")
    else:
        source = open_dataset(dataset, split, cache_dir=cache_dir,
                              max_seconds=cfg.n_frames * HOP_LENGTH / SAMPLE_RATE, **dict(dataset_kw or {}))
        if full_window is None:
            full_window = cfg.n_audio_ctx == 1500
        buckets = (cfg.n_frames,) if full_window else quantile_buckets(source.durations(), cfg.n_frames, n_buckets)
        plan = Plan(source, tokenizer, n_text_ctx=cfg.n_text_ctx, buckets=buckets, batch_size=batch_size or 32)
    log(f"{source.name}: {len(plan)} utterances (planning dropped {plan.stats.as_dict()}, "
        f"source dropped {source.stats.as_dict()})")
    rows = transcribe_batches(model, cfg, tokenizer, iterate_eval(plan))
    wer = word_error_rate([r["reference"] for r in rows], [r["hypothesis"] for r in rows], scoring=scoring)
    groups = group_wers(rows, plan.groups(), scoring)
    return {**wer, **groups, "scoring": scoring, "checkpoint": str(checkpoint),
            "dropped": {**source.stats.as_dict(), **plan.stats.as_dict()}, "rows": rows}


__all__ = ["SCORINGS", "decode_texts", "evaluate_checkpoint", "greedy_decode", "resolve_run", "transcribe_batches",
           "word_error_rate"]
