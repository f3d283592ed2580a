"""One model in three runtimes: a checkpoint exported to OpenAI ``.pt`` (openai-whisper) and to CTranslate2
(faster-whisper), a dataset split transcribed greedily by ours and by both peers from the same 16 kHz arrays, the
transcripts compared and each runtime scored.

This is the check that a fine-tuned model deploys: what we measure is what openai-whisper and faster-whisper users
get. Greedy means temperature 0 without fallback, no previous-text prompt, timestamped decoding (each runtime's
default), the run's language; faster-whisper with beam 1 and its VAD off. openai-whisper and faster-whisper are
imported here only (the ``dev`` extra installs them).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

GREEDY = dict(temperature=0.0, condition_on_previous_text=False)


def compare_with_peers(checkpoint, dataset: str | None = None, split: str = "test", *, cache_dir=None,
                       limit: int | None = None, batch_size: int = 8, scoring: str | None = None,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """Transcribe ``dataset``/``split`` with the model at ``checkpoint`` in ours, openai-whisper and faster-whisper.

    ``checkpoint``: anything :func:`~jax_whisper.convert.load_checkpoint` reads, or a training run directory (its
    best checkpoint; ``dataset`` then defaults to the run's own, with its corpus parameters, and the run's language).
    ``limit`` takes the split's first utterances. Returns ``n``, ``identical`` (ours = openai-whisper, ours =
    faster-whisper, all three), ``wer`` and per-group WERs of each runtime, ``seconds`` of each, and ``rows`` (id,
    reference, the three hypotheses). ValueError for a model of the seed vocabulary, which faster-whisper cannot
    transcribe (README, "The seed vocabulary in faster-whisper").
    """
    import numpy as np

    from jax_whisper.convert import load_checkpoint, save_checkpoint
    from jax_whisper.datasets import SAMPLE_RATE, open_dataset
    from jax_whisper.evaluate import resolve_run, word_error_rate
    from jax_whisper.loop import run_tokenizer
    from jax_whisper.pipeline import HOP_LENGTH, open_splits
    from jax_whisper.scoring import group_wers, scoring_for
    from jax_whisper.tokenizer import get_tokenizer
    from jax_whisper.transcribe import transcribe_many

    checkpoint, run = resolve_run(checkpoint, log)
    cfg, model = load_checkpoint(checkpoint)
    tokenizer = run_tokenizer(run, cfg) if run is not None else get_tokenizer(cfg)
    if tokenizer.timestamp_begin is None:
        raise ValueError(f"{checkpoint}: a model of the seed vocabulary; faster-whisper transcribes OpenAI "
                         f"vocabularies only (README, 'The seed vocabulary in faster-whisper')")
    language = tokenizer.language or "en"
    if run is not None and dataset in (None, run.dataset):
        run = dataclasses.replace(run, cache_dir=cache_dir or run.cache_dir, progress=False)
        source = open_splits(run, cfg)[split]
        dataset = run.dataset
    else:
        dataset = dataset or "synthetic"
        source = open_dataset(dataset, split, cache_dir=cache_dir, max_seconds=cfg.n_frames * HOP_LENGTH / SAMPLE_RATE)
    scoring = scoring or scoring_for(dataset)
    indices = range(len(source) if limit is None else min(limit, len(source)))
    records = [r for r in (source[i] for i in indices) if r is not None]
    audios, metas = [r["audio"] for r in records], {m.id: m for m in (source.metadata(i) for i in indices)}
    log(f"{source.name}: {len(records)} utterances ({source.stats.as_dict()} dropped); language {language}")

    import faster_whisper
    import whisper

    seconds, hyps = {}, {}
    with tempfile.TemporaryDirectory(prefix="jax-whisper-peers-") as tmp:
        pt = save_checkpoint(model, cfg, Path(tmp) / "model.pt", format="openai")
        ct2 = save_checkpoint(model, cfg, Path(tmp) / "ct2", format="ctranslate2")
        t = time.perf_counter()
        out = list(transcribe_many(model, cfg, audios, batch_size=batch_size, language=language, **GREEDY))
        bad = next((o for o in out if isinstance(o, Exception)), None)
        if bad is not None:
            raise bad
        hyps["ours"], seconds["ours"] = [o["text"] for o in out], time.perf_counter() - t
        log(f"ours: {seconds['ours']:.1f} s")
        om = whisper.load_model(str(pt), device="cpu")
        t = time.perf_counter()
        hyps["openai-whisper"] = [om.transcribe(a, fp16=False, language=language, **GREEDY)["text"] for a in audios]
        seconds["openai-whisper"] = time.perf_counter() - t
        log(f"openai-whisper: {seconds['openai-whisper']:.1f} s")
        fw = faster_whisper.WhisperModel(str(ct2), device="cpu", compute_type="float32")
        t = time.perf_counter()
        hyps["faster-whisper"] = ["".join(s.text for s in fw.transcribe(a, language=language, beam_size=1,
                                                                        vad_filter=False, **GREEDY)[0])
                                  for a in audios]
        seconds["faster-whisper"] = time.perf_counter() - t
        log(f"faster-whisper: {seconds['faster-whisper']:.1f} s")

    refs = [r["text"] for r in records]
    ours = [h.strip() for h in hyps["ours"]]
    same_openai = [o == h.strip() for o, h in zip(ours, hyps["openai-whisper"], strict=True)]
    same_faster = [o == h.strip() for o, h in zip(ours, hyps["faster-whisper"], strict=True)]
    groups = {r["id"]: metas[r["id"]].group for r in records if metas[r["id"]].group is not None}
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "dataset": dataset, "split": split, "n": len(records),
                              "scoring": scoring, "seconds": seconds,
                              "identical": {"openai-whisper": int(np.sum(same_openai)),
                                            "faster-whisper": int(np.sum(same_faster)),
                                            "all": int(np.sum(np.logical_and(same_openai, same_faster)))}}
    for name, hs in hyps.items():
        rows = [{"id": r["id"], "reference": ref, "hypothesis": h} for r, ref, h in zip(records, refs, hs, strict=True)]
        result[name] = {"wer": word_error_rate(refs, hs, scoring=scoring)["wer"], **group_wers(rows, groups, scoring)}
    result["rows"] = [{"id": r["id"], "reference": ref, **{name: hyps[name][k] for name in hyps}}
                      for k, (r, ref) in enumerate(zip(records, refs, strict=True))]
    return result


__all__ = ["compare_with_peers"]
