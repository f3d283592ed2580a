"""The training loop both trainers share (no jax, no torch): data, resume, progress, metrics, validation, checkpoints,
the NaN stop and the results. The framework lives behind a small backend interface, so the Flax trainer
(``jax_whisper.train.FlaxBackend``) and the PyTorch reference (``torch_reference.train.TorchBackend``) run the very
same loop over the very same batches.

A backend provides::

    platform: str                                  "cpu", "gpu", "tpu", "cuda": picks the default preset

    load_initial(path) -> WhisperConfig            read the checkpoint a run starts from (``init_from``); its dims
    setup(tc, cfg, total_steps, out) -> str        build model (from those weights), optimizer and checkpoints;
                                                   returns a summary line
    latest_step() -> int | None                    newest periodic checkpoint
    save(step, meta, best=False)                   a periodic (or the best) checkpoint holding ``meta`` (JSON-able)
    restore(step, best=False) -> dict              load a checkpoint in place; returns its ``meta``
    step(batch) -> dict[str, float]                one optimizer step: loss, ce, ctc, accuracy, grad_norm, tokens
    lr(step) -> float                              the learning rate step ``step`` (0-based) used
    evaluate(plan, tokenizer, scoring) -> dict     loss, accuracy, wer, utterances, words, examples
    close()
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from jax_whisper.config import RunConfigError, TrainConfig
from jax_whisper.pipeline import drop_counts, make_iterator, open_splits, run_plans, train_dataset
from jax_whisper.runlog import MetricsLog, claim_run_directory, plot_curves, write_json_atomic
from jax_whisper.scoring import scoring_for
from jax_whisper.tokenizer import get_tokenizer


def _scores(r: dict) -> dict:
    """The scores of an evaluation that are logged and kept: loss, token accuracy, WER, the WER of each scoring
    group (``wer_heldout_voices``, ...) and the CTC head's WER when the model has one."""
    return {k: v for k, v in r.items() if k in ("loss", "accuracy", "wer", "ctc_wer") or k.startswith("wer_")}


def run_tokenizer(tc: TrainConfig, cfg) -> object:
    """The run's tokenizer: the model's vocabulary with the prompt ``tc`` asks for (a multilingual checkpoint's
    language and task; openai-whisper's defaults, English transcription, when unset)."""
    if not cfg.is_multilingual:
        if tc.language not in (None, "en") or tc.task not in (None, "transcribe"):
            raise RunConfigError(f"--language {tc.language} / --task {tc.task}: the model is English-only (its prompt "
                             f"has no language or task token); drop them")
        return get_tokenizer(cfg)
    try:
        return get_tokenizer(cfg, language=tc.language or "en", task=tc.task or "transcribe")
    except ValueError as e:
        raise RunConfigError(f"--language {tc.language} / --task {tc.task}: {e}") from None


def fit(tc: TrainConfig, backend, *, log: Callable[[str], None] = print, stop_after: int | None = None,
        shard_index: int = 0, shard_count: int = 1) -> dict:
    """Run training as ``tc`` says; returns (and writes to ``<output_dir>/results.json``) the results.

    ``stop_after`` ends the loop early at that step (after its checkpoint), as an interruption would; tests use it.
    The last line logged is ``test WER: X.X%``. In a run of ``shard_count`` processes this is process
    ``shard_index``: it loads only its rows of every batch, and only process 0 writes the run's files (config,
    metrics, results); the backend's checkpoints are written by all of them together.
    """
    t0 = time.time()
    out = Path(tc.output_dir)
    lead = shard_index == 0
    # process 0 owns the directory: it alone writes the run's files (the others wait for it at the first collective)
    lock = claim_run_directory(out, resume=tc.resume, overwrite=tc.overwrite) if lead else None
    try:
        return _fit(tc, backend, out, t0, log=log, stop_after=stop_after, shard_index=shard_index,
                    shard_count=shard_count)
    finally:
        if lock is not None:
            lock.close()


def _fit(tc: TrainConfig, backend, out: Path, t0: float, *, log: Callable[[str], None], stop_after: int | None,
         shard_index: int, shard_count: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    tc = tc.for_platform(backend.platform)  # the preset the run trains is the one its config.json names
    initial = None
    if tc.init_from is not None:
        initial = backend.load_initial(tc.init_from)
        log(f"initial weights: {tc.init_from} ({initial.n_audio_layer}+{initial.n_text_layer} layers, "
            f"{initial.n_audio_state} dims, vocabulary {initial.n_vocab})")
    cfg = tc.model_config(initial)
    tokenizer = run_tokenizer(tc, cfg)
    scoring = scoring_for(tc.dataset)
    shard = dict(shard_index=shard_index, shard_count=shard_count)
    lead = shard_index == 0

    sources = open_splits(tc, cfg)
    for split, src in sources.items():
        log(f"{split}: {len(src)} utterances from {src.name} (dropped: {src.stats.as_dict()})")
    plans = run_plans(tc, cfg, tokenizer, sources, **shard)
    plan, evals = plans["train"], {s: plans[s] for s in ("validation", "test")}
    for name, p in (("train", plan), *evals.items()):
        log(f"{name}: planned {p.stats.as_dict()}")
    total_steps = tc.max_steps or tc.epochs * plan.steps_per_epoch
    log(f"buckets (frames, tokens): {plan.shapes()}; {plan.steps_per_epoch} steps/epoch, {total_steps} steps")
    log(backend.setup(tc, cfg, total_steps, out))

    start, data_state, history, prior = 0, None, [], {"train_seconds": 0.0, "wall_seconds": 0.0}
    best, initial_scores = {"wer": None, "step": None}, None
    latest = backend.latest_step() if tc.resume else None
    if latest is not None:
        meta = backend.restore(latest)
        start, data_state, history, prior, best = (meta["step"], meta["data_state"], meta["history"], meta["clock"],
                                                   meta["best"])
        initial_scores = meta.get("initial")
        log(f"resumed from {out / 'checkpoints'} at step {start}")
    elif tc.resume:
        log(f"--resume: no checkpoint in {out / 'checkpoints'}; starting from scratch")
    if lead:
        (out / "config.json").write_text(json.dumps({"model": json.loads(cfg.to_json()), "train": tc.to_dict()},
                                                    indent=2))
    metrics = MetricsLog(out, tensorboard=tc.tensorboard, resume_step=start if data_state is not None else None,
                         enabled=lead)
    it = make_iterator(train_dataset(plan, total_steps), num_workers=tc.num_workers)
    if data_state is not None:
        it.set_state(data_state)

    loop_start, eval_seconds = time.time(), 0.0

    def clock() -> dict:
        """Training time excludes validation; wall time is everything since the (first) process started."""
        now = time.time()
        return {"train_seconds": prior["train_seconds"] + now - loop_start - eval_seconds,
                "wall_seconds": prior["wall_seconds"] + now - t0}

    def meta(step: int) -> dict:
        return {"step": step, "data_state": it.get_state(), "history": history, "best": best, "clock": clock(),
                "initial": initial_scores,
                "model_config": json.loads(cfg.to_json()), "train_config": tc.to_dict()}

    bar = None
    if tc.progress and lead:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0)
    say = bar.write if bar is not None else log

    def draw() -> None:
        if lead:
            model = tc.model_name()
            plot_curves(out, history, title=f"{model}: {tc.dataset}, batch {tc.batch_size}, lr {tc.max_lr:g}, "
                                            f"{total_steps} steps")

    def validate(step: int) -> None:
        nonlocal best, eval_seconds
        t_eval, c = time.time(), clock()
        r = backend.evaluate(evals["validation"], tokenizer, scoring)
        eval_seconds += time.time() - t_eval
        scores = _scores(r)
        history.append({"step": step, "train_minutes": c["train_seconds"] / 60, "wall_minutes": c["wall_seconds"] / 60,
                        **{f"val_{k}": v for k, v in scores.items()}})
        metrics.write("validation", step, scores)
        ex = r["examples"][0] if r["examples"] else {"reference": "", "hypothesis": ""}
        ctc = f" (CTC alone {r['ctc_wer']:.1f}%)" if "ctc_wer" in r else ""
        say(f"step {step}: val loss {r['loss']:.3f} acc {r['accuracy']:.3f} WER {r['wer']:.1f}%{ctc} | "
            f"ref: {ex['reference']!r} hyp: {ex['hypothesis']!r}")
        if best["wer"] is None or r["wer"] < best["wer"]:
            best = {"wer": r["wer"], "step": step}
            backend.save(step, meta(step), best=True)
        draw()

    if tc.init_from is not None and start == 0:  # what the checkpoint does before training, decoded the same way
        validate(0)
        t_eval = time.time()
        initial_scores = _scores(backend.evaluate(evals["test"], tokenizer, scoring))
        eval_seconds += time.time() - t_eval
        say("step 0: test WER " + ", ".join(f"{k[4:] or 'all'} {v:.1f}%" for k, v in initial_scores.items()
                                             if k.startswith("wer")))
    status, step, window = "completed", start, []
    try:
        for step in range(start + 1, total_steps + 1):
            batch = next(it)
            t_step = time.time()
            m = backend.step(batch, step)
            if not all(math.isfinite(m[k]) for k in ("loss", "grad_norm")):
                status = "diverged"
                say(f"step {step}: loss {m['loss']} / grad norm {m['grad_norm']} is not finite; stopping. "
                    f"The last good checkpoint is kept in {out / 'checkpoints'}.")
                break
            window.append((time.time() - t_step, len(batch["id"]) * shard_count))  # global rows
            if step % tc.log_every == 0 or step == total_steps:
                secs = sum(w[0] for w in window)
                rate = {"samples_per_s": sum(w[1] for w in window) / max(secs, 1e-9),
                        "steps_per_s": len(window) / max(secs, 1e-9)}
                window.clear()
                metrics.write("train", step, {**m, "lr": backend.lr(step - 1), **rate,
                                              "epoch": (step - 1) / plan.steps_per_epoch,
                                              "wall_minutes": clock()["wall_seconds"] / 60})
                if bar is not None:
                    bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}",
                                    ex_s=f"{rate['samples_per_s']:.1f}", refresh=False)
            if bar is not None:
                bar.update(1)
            epoch_end = step % plan.steps_per_epoch == 0
            periodic = step % tc.eval_every == 0 if tc.eval_every else epoch_end
            if periodic or step == total_steps:
                validate(step)
            if step % tc.checkpoint_every == 0 or epoch_end or step == total_steps or step == stop_after:
                backend.save(step, meta(step))
            if step == stop_after:
                status = "interrupted"
                break
    finally:
        if bar is not None:
            bar.close()

    c = clock()
    results = {"status": status, "steps": step, "train_minutes": c["train_seconds"] / 60,
               "wall_minutes": c["wall_seconds"] / 60, "val_wer": best["wer"], "best_step": best["step"],
               "history": history, "dropped": drop_counts(sources, plans)}
    if initial_scores is not None:
        results.update({f"initial_test_{k}": v for k, v in initial_scores.items()})
    if status == "completed":
        if best["step"] is not None and best["step"] != step:
            backend.restore(best["step"], best=True)
            log(f"testing the best validation checkpoint (step {best['step']}, val WER {best['wer']:.1f}%)")
        r = backend.evaluate(evals["test"], tokenizer, scoring)
        scores = _scores(r)
        metrics.write("test", step, scores)
        results.update({f"test_{k}": v for k, v in scores.items()}, test_utterances=r["utterances"],
                       wall_minutes=clock()["wall_seconds"] / 60)
    backend.close()
    metrics.close()
    if lead:
        write_json_atomic(out / "results.json", results)
    if status == "completed":
        log(f"results: {out / 'results.json'}; curves: {out / 'curves.png'}")
        parts = [f"{name} {results[key]:.1f}%" for key, name in (
            ("test_wer_heldout_voices", "held-out voices"), ("test_wer_train_voices", "training voices"),
            ("test_ctc_wer", "the CTC head alone")) if key in results]
        if parts:
            log("test WER of " + ", ".join(parts))
        log(f"test WER: {results['test_wer']:.1f}%")
    elif status == "diverged":
        raise FloatingPointError(f"training diverged at step {step}; last good checkpoint in {out / 'checkpoints'}")
    return results


__all__ = ["fit"]
