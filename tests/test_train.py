"""The Flax trainer on a shrunk model and a small eSpeak corpus: a whole run (metrics, checkpoints, results,
the last line), exact resume after SIGKILL, the NaN stop, gradient accumulation, and checkpoint conversion."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jax_whisper import model as M
from jax_whisper import train as train_mod
from jax_whisper.benchmark import train_batch
from jax_whisper.config import TrainConfig
from jax_whisper.convert import flax_to_numpy, load_checkpoint, training_checkpoint
from jax_whisper.datasets import open_dataset
from jax_whisper.pipeline import Plan, quantile_buckets
from jax_whisper.tokenizer import get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = "n_audio_state=64,n_text_state=64,n_audio_head=2,n_text_head=2,n_audio_layer=1,n_text_layer=1"
CORPUS = dict(n_train=40, n_val=8, n_test=8)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    open_dataset("synthetic", "train", cache_dir=d, **CORPUS)  # build once for the module
    return d


def tiny_config(cache_dir, out, **kw) -> TrainConfig:
    base = dict(model=TINY, cache_dir=str(cache_dir), **CORPUS, batch_size=4, buckets=2, eval_batch_size=8,
                warmup_steps=2, max_lr=5e-3, output_dir=str(out), progress=False, tensorboard=True,
                checkpoint_every=100, keep_checkpoints=2, max_steps=0, eval_every=0, ctc_only_steps=2)
    base.update(kw)
    return TrainConfig(**base)


def script_main(name: str):
    """``scripts/<name>.py``'s ``main``, run in this process (so it reuses what is compiled)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def trained_run(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    lines = []
    results = train_mod.train(tiny_config(cache_dir, out, epochs=2), log=lines.append)
    return out, results, lines


def test_run_writes_results_metrics_and_checkpoints(trained_run):
    out, results, lines = trained_run
    assert results["status"] == "completed"
    on_disk = json.loads((out / "results.json").read_text())
    for key in ("test_wer", "val_wer", "steps", "train_minutes"):
        assert on_disk[key] == results[key]
    assert set(on_disk["dropped"]) == {"train", "validation", "test"}
    assert all({"too_long", "too_many_tokens", "unreadable"} <= set(d) for d in on_disk["dropped"].values())
    assert lines[-1] == f"test WER: {results['test_wer']:.1f}%"
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(10, results["steps"] + 1, 10)) + (
        [results["steps"]] if results["steps"] % 10 else [])
    assert all(math.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in train)
    assert len([r for r in records if r["split"] == "validation"]) == 2  # once per epoch
    assert [r["split"] for r in records].count("test") == 1
    assert any(f.name.startswith("events.out.tfevents") for f in (out / "tensorboard").iterdir())
    kept = sorted(int(d.name) for d in (out / "checkpoints").iterdir() if d.name.isdigit())
    assert len(kept) == 2 and kept[-1] == results["steps"]  # keep_checkpoints=2
    assert results["best_step"] in [h["step"] for h in results["history"]]
    # the CTC head's own transcripts are scored too (a diagnostic: encoder alone vs the whole model)
    assert results["test_ctc_wer"] >= 0 and all(h["val_ctc_wer"] >= 0 for h in results["history"])
    assert training_checkpoint(out) == out / "best" / str(results["best_step"])


def test_run_reports_each_voice_group_and_draws_its_curves(trained_run):
    out, results, lines = trained_run
    for split, last in (("test", results), ("val", results["history"][-1])):
        for group in ("heldout_voices", "train_voices"):
            assert last[f"{split}_wer_{group}"] >= 0
    assert lines[-2].startswith("test WER of held-out voices ") and "the CTC head alone" in lines[-2]
    png = (out / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_evaluating_a_runs_checkpoint_reproduces_its_scores(cache_dir, tmp_path):
    """scripts/evaluate.py's function on the run's checkpoints: the run's own plan (corpus, buckets, batch size), so
    the very WERs the run logged: the last validation with the last checkpoint, the test with the best one. The
    run trains the encoder alone (CTC only), so its decoder still babbles: non-empty transcripts to compare."""
    from jax_whisper.evaluate import evaluate_checkpoint

    out = tmp_path / "run"
    results = train_mod.train(tiny_config(cache_dir, out, epochs=2, ctc_only_steps=1000), log=lambda _: None)
    last = results["history"][-1]
    val = evaluate_checkpoint(out / "checkpoints" / str(last["step"]), split="validation", log=lambda _: None)
    assert val["wer"] == last["val_wer"]
    assert any(r["hypothesis"] for r in val["rows"])  # not the trivial 100 % of empty transcripts
    said = []
    test = evaluate_checkpoint(out, log=said.append)  # a run directory: its best checkpoint, the test split
    assert test["checkpoint"] == str(out / "best" / str(results["best_step"]))
    assert test["wer"] == results["test_wer"]
    assert test["wer_heldout_voices"] == results["test_wer_heldout_voices"]
    assert test["wer_train_voices"] == results["test_wer_train_voices"]
    assert not any("no best/" in line for line in said)
    shutil.rmtree(out / "best")  # without best/: the latest periodic checkpoint, and it says which
    said.clear()
    again = evaluate_checkpoint(out, split="validation", log=said.append)
    assert again["checkpoint"] == str(out / "checkpoints" / str(last["step"])) and again["wer"] == val["wer"]
    assert any(f"no best/ checkpoint; evaluating the latest periodic one, step {last['step']}" in line
               for line in said)


def test_a_runs_directory_is_a_model_for_transcribe_and_openai_whisper(trained_run, cache_dir, tmp_path, capsys):
    """A run directory serves as the model at once: scripts/transcribe.py (5 s window, the seed tokenizer, decoded
    as trained: <|notimestamps|> prompt, silence padding) and, converted, openai-whisper's load_model."""

    import soundfile as sf
    import torch
    import whisper

    from jax_whisper.audio import log_mel_spectrogram
    from jax_whisper.decoding import DecodingOptions, decode
    from jax_whisper.transcribe import transcribe

    out, _, _ = trained_run
    cfg, jm = load_checkpoint(out)
    audio = open_dataset("synthetic", "test", cache_dir=cache_dir, **CORPUS)[0]["audio"]
    sf.write(tmp_path / "u.wav", audio, 16000)
    assert script_main("transcribe")(["--model", str(out), "--json", str(tmp_path / "u.wav")]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["text"] == transcribe(jm, cfg, audio)["text"]
    window = np.pad(audio, (0, cfg.n_frames * 160 - audio.size))  # silence to the window, as training pads
    mel = np.asarray(log_mel_spectrogram(window[None], n_mels=cfg.n_mels))[0]
    want = decode(jm, mel, DecodingOptions(language="en", without_timestamps=True)).text
    assert transcribe(jm, cfg, audio)["text"].strip() == want.strip()

    assert script_main("convert")([str(out), str(tmp_path / "m.pt"), "--to", "openai"]) == 0
    om = whisper.load_model(str(tmp_path / "m.pt"), device="cpu")
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((2, cfg.n_mels, cfg.n_frames)).astype(np.float32)
    tokens = rng.integers(0, cfg.n_vocab, (2, 7))
    with torch.no_grad():
        theirs = om(torch.from_numpy(mel), torch.from_numpy(tokens)).numpy()
    ours = np.asarray(jm(mel, tokens))
    assert np.abs(ours - theirs).max() <= 5e-5 * max(1.0, np.abs(theirs).max())


def test_loss_falls(trained_run):
    out, results, _ = trained_run
    losses = [json.loads(x)["ce"] for x in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["split"] == "train"]
    assert losses[0] > math.log(50262) - 2.5  # ~uniform over the vocabulary at the start
    assert losses[-1] < losses[0] - 1.0, losses


def test_training_checkpoint_converts_to_torch(trained_run, tmp_path):

    import torch

    from torch_reference.model import Whisper as TorchWhisper


    out, _, _ = trained_run
    assert script_main("convert")([str(out), str(tmp_path / "m.safetensors"), "--to", "torch"]) == 0
    cfg, jm = load_checkpoint(out)
    from safetensors.torch import load_file

    tm = TorchWhisper(cfg)
    tm.load_state_dict(load_file(str(tmp_path / "m.safetensors")), strict=True)
    tm.eval()
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((2, cfg.n_mels, 100)).astype(np.float32)
    tokens = rng.integers(0, cfg.n_vocab, (2, 7))
    want = tm(torch.from_numpy(mel), torch.from_numpy(tokens)).detach().numpy()
    got = np.asarray(jm(mel, tokens))
    assert np.abs(got - want).max() <= 5e-5 * max(1.0, np.abs(want).max())


def test_nan_loss_stops_and_keeps_last_good_checkpoint(cache_dir, tmp_path, monkeypatch):
    real_step = train_mod.train_step
    calls = {"n": 0}

    def poisoned(*args, **kw):
        calls["n"] += 1
        m = real_step(*args, **kw)
        return {**m, "loss": m["loss"] * np.nan} if calls["n"] == 5 else m

    monkeypatch.setattr(train_mod, "train_step", poisoned)
    tc = tiny_config(cache_dir, tmp_path / "run", epochs=1, checkpoint_every=2)
    with pytest.raises(FloatingPointError, match="diverged at step 5"):
        train_mod.train(tc, log=lambda s: None)
    steps = sorted(int(d.name) for d in (tmp_path / "run" / "checkpoints").iterdir() if d.name.isdigit())
    assert steps == [2, 4]  # step 5 was never saved
    _, jm = load_checkpoint(tmp_path / "run" / "checkpoints" / "4")
    assert all(np.isfinite(v).all() for v in flax_to_numpy(jm).values())
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "diverged"


# Relative float32 noise between micro-batched and full-batch gradients. Token CE alone: measured 6e-8 (norm) and
# 6e-7 (relative L2). With CTC the floor is higher: its forward variables are log-probabilities summed over ~100
# frames (|alpha| ~ 1e2), so float32 rounding leaves ~1e-5 relative in its gradient: measured 5.5e-6 here and
# 1.1e-5 in one CI run.
ACCUM_NOISE = {0.0: 1e-5, 0.3: 5e-5}


@pytest.mark.parametrize("ctc_weight", sorted(ACCUM_NOISE))
def test_gradient_accumulation_equals_full_batch(cache_dir, ctc_weight):
    """Plain SGD, so the parameter change is -lr * gradient: the micro-batched gradient equals the full-batch one
    (Adam's first step, ~lr * sign(g), would magnify float32 noise in near-zero gradient components)."""
    import optax

    tc = tiny_config(cache_dir, "unused", dropout=0.0, ctc_weight=ctc_weight, ctc_only_steps=0)
    cfg = tc.model_config()
    src = open_dataset("synthetic", "train", cache_dir=cache_dir, **CORPUS)
    plan = Plan(src, get_tokenizer(cfg), n_text_ctx=cfg.n_text_ctx, buckets=quantile_buckets(src.durations(), 500, 1),
                batch_size=4)
    batch = train_mod.device_batch(plan.collate(*plan.step(0)))
    runs = []
    for accum in (1, 2):
        tm = train_mod.init_model(tc, cfg)
        before = [np.asarray(x) for x in jax.tree.leaves(nnx.state(tm, nnx.Param))]
        opt = nnx.Optimizer(tm, optax.sgd(1.0), wrt=nnx.Param)
        m = train_mod.train_step(tm, opt, batch, n_mels=cfg.n_mels, label_smoothing=0.1, ctc_weight=ctc_weight,
                                 grad_accum=accum)
        after = [np.asarray(x) for x in jax.tree.leaves(nnx.state(tm, nnx.Param))]
        runs.append((float(m["loss"]), float(m["grad_norm"]), [a - b for a, b in zip(after, before, strict=True)]))
    (l1, n1, g1), (l2, n2, g2) = runs
    bound = ACCUM_NOISE[ctc_weight]
    assert abs(l1 - l2) <= 1e-5 * abs(l1) and abs(n1 - n2) <= bound * n1, (l1, l2, n1, n2)
    total = np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(g1, g2, strict=True)))
    assert total <= bound * n1, (total, n1)  # relative L2 of the whole gradient
    assert sum(int(np.any(g != 0)) for g in g1) == len(g1)  # every parameter got a gradient


def _cli(cache_dir, out, *extra):
    return [sys.executable, str(ROOT / "scripts" / "train_flax.py"), "--model", TINY, "--cache-dir", str(cache_dir),
            "--n-train", "40", "--n-val", "8", "--n-test", "8", "--batch-size", "4", "--buckets", "2",
            "--max-steps", "8", "--epochs", "100", "--checkpoint-every", "2", "--warmup-steps", "2", "--dropout", "0.1",
            "--ctc-only-steps", "3", "--eval-every", "0",
            "--eval-batch-size", "8", "--progress", "false", "--tensorboard", "false", "--output-dir", str(out),
            *extra]


def test_resume_after_sigkill_reaches_the_same_parameters(cache_dir, tmp_path):
    """Dropout stays on (the preset's 0.1), so the restored RNG state matters as much as weights and data."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(_cli(cache_dir, tmp_path / "a"), check=True, env=env, capture_output=True, timeout=600)

    proc = subprocess.Popen(_cli(cache_dir, tmp_path / "b"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not (tmp_path / "b" / "checkpoints" / "4").is_dir():  # orbax renames a step into place when complete
        assert proc.poll() is None and time.time() < deadline, "run ended before its step-4 checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(int(d.name) for d in (tmp_path / "b" / "checkpoints").iterdir() if d.name.isdigit())
    assert killed_at < 8

    r = subprocess.run(_cli(cache_dir, tmp_path / "b", "--resume"), env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"at step {killed_at}" in r.stdout
    _, a = load_checkpoint(tmp_path / "a" / "checkpoints" / "8")
    _, b = load_checkpoint(tmp_path / "b" / "checkpoints" / "8")
    pa, pb = flax_to_numpy(a), flax_to_numpy(b)
    diff = {k: float(np.abs(pa[k] - pb[k]).max()) for k in pa}
    assert max(diff.values()) == 0.0, sorted(diff.items(), key=lambda kv: -kv[1])[:5]
    ra, rb = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("a", "b"))
    assert ra["test_wer"] == rb["test_wer"] and ra["val_wer"] == rb["val_wer"]


def test_config_cli_round_trip(tmp_path):
    import argparse

    from jax_whisper.config import add_config_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_config_arguments(p)
    tc = config_from_args(p.parse_args(["--batch-size", "32", "--resume", "--dropout", "none", "--ctc-weight", "0",
                                        "--output-dir", str(tmp_path)]))  # no run there: nothing to resume
    assert tc.batch_size == 32 and tc.resume is True and tc.dropout is None and tc.ctc_weight == 0.0
    seed = config_from_args(p.parse_args(["--recipe", "seed"]))
    assert (seed.batch_size, seed.epochs, seed.max_lr, seed.weight_decay) == (64, 10, 2e-4, 0.01)
    assert dataclasses.replace(tc, model="n_text_layer=2").model_config().n_text_layer == 2
    with pytest.raises(ValueError, match="n_layers"):
        dataclasses.replace(tc, model="n_layers=2").model_config()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_gradient_matches_autodiff(smoothing):
    """The hand-written backward of the token loss equals autodiff of the plain log-softmax formula."""
    import jax.numpy as jnp

    seed = 20261125
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.standard_normal((3, 7, 50)).astype(np.float32) * 3)
    targets = rng.integers(0, 50, (3, 7))
    targets[0, 5:] = train_mod.IGNORE_INDEX
    targets = jnp.asarray(targets)

    def plain(x):
        mask = targets != train_mod.IGNORE_INDEX
        logp = jax.nn.log_softmax(x, -1)
        nll = -jnp.take_along_axis(logp, jnp.where(mask, targets, 0)[..., None], -1)[..., 0]
        nll = (1 - smoothing) * nll - smoothing * logp.mean(-1)
        return 2.5 * jnp.sum(jnp.where(mask, nll, 0.0))

    ours, g_ours = jax.jit(jax.value_and_grad(
        lambda x: 2.5 * train_mod.cross_entropy(x, targets, label_smoothing=smoothing)[0]))(logits)
    ref, g_ref = jax.value_and_grad(plain)(logits)
    rel = float(jnp.linalg.norm(g_ours - g_ref) / jnp.linalg.norm(g_ref))
    assert abs(float(ours - ref)) <= 1e-5 * abs(float(ref)), f"seed {seed}"
    assert rel <= 1e-5 and float(jnp.max(jnp.abs(g_ours - g_ref))) <= 1e-5, f"seed {seed}: rel {rel:.2e}"
    assert float(jnp.abs(g_ours[0, 5:]).max()) == 0.0  # ignored positions get no gradient


@pytest.mark.parametrize("smoothing,block_rows", [(0.0, 4096), (0.1, 4096), (0.1, 8)])
def test_projected_cross_entropy_matches_logits_then_loss(smoothing, block_rows):
    """The fused projection + loss (gradients formed in the forward pass, rows in blocks) equals projecting onto the
    embedding and autodiff of :func:`cross_entropy`: loss, argmax hits, and both gradients. ``block_rows=8`` runs
    the blocked loop with a padded last block (21 rows)."""
    import jax.numpy as jnp

    seed = 20261201
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((3, 7, 16)).astype(np.float32))
    emb = jnp.asarray(rng.standard_normal((50, 16)).astype(np.float32) * 0.5)
    emb = emb.at[7].set(emb[3])  # two equal rows: tied logits, where argmax takes the first
    targets = rng.integers(0, 50, (3, 7))
    targets[0, 5:] = train_mod.IGNORE_INDEX
    targets[1, :2] = 7
    targets = jnp.asarray(targets)

    def reference(x, emb):
        logits = x @ emb.T
        loss, count = train_mod.cross_entropy(logits, targets, label_smoothing=smoothing)
        hits = jnp.sum((jnp.argmax(logits, -1) == targets) & (targets != train_mod.IGNORE_INDEX))
        return 2.5 * loss, (count, hits)

    def fused(x, emb):
        loss, count, hits = train_mod.projected_cross_entropy(x, emb, targets, label_smoothing=smoothing,
                                                              block_rows=block_rows)
        return 2.5 * loss, (count, hits)

    (ref, (n_ref, h_ref)), g_ref = jax.value_and_grad(reference, argnums=(0, 1), has_aux=True)(x, emb)
    (ours, (n, h)), g_ours = jax.jit(jax.value_and_grad(fused, argnums=(0, 1), has_aux=True))(x, emb)
    assert abs(float(ours - ref)) <= 1e-6 * abs(float(ref)), f"seed {seed}: {float(ours)} vs {float(ref)}"
    assert int(n) == int(n_ref) == 19 and int(h) == int(h_ref), f"seed {seed}"
    for name, a, b in zip(("dx", "d embedding"), g_ours, g_ref, strict=True):
        rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
        worst = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))  # max-abs error, in units of the largest entry
        assert rel <= 1e-6 and worst <= 1e-6, f"seed {seed}: {name} rel-L2 {rel:.2e}, max-abs {worst:.2e}"
    assert float(jnp.abs(g_ours[0][0, 5:]).max()) == 0.0  # ignored positions get no gradient
    value, *_ = jax.jit(lambda x, e: train_mod.projected_cross_entropy(x, e, targets, label_smoothing=smoothing,
                                                                        block_rows=block_rows))(x, emb)
    assert abs(2.5 * float(value) - float(ref)) <= 1e-6 * abs(float(ref))  # the undifferentiated path


def test_ctc_only_phase_trains_the_encoder_alone(cache_dir):
    """During the first ``ctc_only_steps`` the loss is CTC alone: the decoder gets no gradient, the encoder does."""
    import optax

    tc = tiny_config(cache_dir, "unused", dropout=0.0, ctc_only_steps=3, ctc_weight=0.3)
    assert [tc.ctc_weight_at(s) for s in (1, 3, 4, 100)] == [1.0, 1.0, 0.3, 0.3]
    cfg = tc.model_config()
    src = open_dataset("synthetic", "train", cache_dir=cache_dir, **CORPUS)
    plan = Plan(src, get_tokenizer(cfg), n_text_ctx=cfg.n_text_ctx, buckets=quantile_buckets(src.durations(), 500, 1),
                batch_size=4)
    batch = train_mod.device_batch(plan.collate(*plan.step(0)))
    tm = train_mod.init_model(tc, cfg)
    assert tm.ctc is not None
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(tm, nnx.Param)))  # the step donates the arrays
    opt = nnx.Optimizer(tm, optax.sgd(1.0), wrt=nnx.Param)
    m = train_mod.train_step(tm, opt, batch, n_mels=cfg.n_mels, label_smoothing=0.0,
                             ctc_weight=tc.ctc_weight_at(1), grad_accum=1)
    after = nnx.to_pure_dict(nnx.state(tm, nnx.Param))
    assert float(m["ce"]) == 0.0 and float(m["ctc"]) > 0 and float(m["loss"]) == float(m["ctc"])
    moved = lambda tree_a, tree_b: [float(np.abs(np.asarray(a) - np.asarray(b)).max())  # noqa: E731
                                    for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True)]
    assert max(moved(before["whisper"]["decoder"], after["whisper"]["decoder"])) == 0.0
    assert min(moved(before["ctc"], after["ctc"])) > 0 and max(moved(before["whisper"]["encoder"],
                                                                      after["whisper"]["encoder"])) > 0


# the forwards the derivative rules replace, differentiated by autodiff
AUTODIFF_GELU = partial(jax.nn.gelu, approximate=False)
AUTODIFF_LAYER_NORM = partial(nnx.LayerNorm, epsilon=1e-5, use_fast_variance=False)


def _full_size_residuals(vjp_fn, x) -> list:
    """The arrays of ``x``'s size a ``jax.vjp`` function keeps for the backward pass."""
    return [r for r in jax.tree_util.tree_leaves(vjp_fn) if np.size(r) == x.size]


def test_gelu_backward_keeps_one_array():
    """``model._gelu``'s derivative rule leaves reverse mode one residual of the input's size (autodiff of the
    erfc formula keeps several), with the forward bit-identical to ``jax.nn.gelu(approximate=False)``."""
    x = jax.random.normal(jax.random.key(3), (4, 1536))
    ours, ours_vjp = jax.vjp(M._gelu, x)
    ref, ref_vjp = jax.vjp(AUTODIFF_GELU, x)
    assert np.array_equal(np.asarray(ours), np.asarray(ref))
    n_ours, n_ref = len(_full_size_residuals(ours_vjp, x)), len(_full_size_residuals(ref_vjp, x))
    assert n_ours == 1 and n_ref >= 3, (n_ours, n_ref)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_layer_norm_is_nnx_layer_norm_with_one_residual(dtype):
    """``model._LayerNorm`` computes ``nnx.LayerNorm``'s output bit for bit (float32 parameters, either input
    dtype) and its derivative rule leaves reverse mode one full-size residual where autodiff keeps three."""
    ours, ref = M._LayerNorm(384, rngs=nnx.Rngs(0)), AUTODIFF_LAYER_NORM(384, rngs=nnx.Rngs(0))
    k = jax.random.split(jax.random.key(5), 3)
    for m in (ours, ref):
        m.scale[...] = 1 + jax.random.normal(k[0], (384,))
        m.bias[...] = jax.random.normal(k[1], (384,))
    x = (jax.random.normal(k[2], (2, 50, 384)) * 3 + 1).astype(dtype)
    assert np.array_equal(np.asarray(ours(x)), np.asarray(ref(x)))

    def residuals(m):
        gd, st = nnx.split(m)
        _, vjp = jax.vjp(lambda st, x: nnx.merge(gd, st)(x), st, x)
        return len(_full_size_residuals(vjp, x))

    assert residuals(ours) == 1 and residuals(ref) >= 3, (residuals(ours), residuals(ref))


@pytest.mark.parametrize("name, autodiff", [("_gelu", AUTODIFF_GELU), ("_LayerNorm", AUTODIFF_LAYER_NORM)])
def test_train_step_memory_with_the_derivative_rules(monkeypatch, name, autodiff):
    """The compiled train step needs less temporary memory with ``model._gelu`` / ``model._LayerNorm`` than with
    autodiff of the same forward (the layer scan stores each block's residuals), and computes the same loss."""
    tc = TrainConfig(model=TINY.replace("layer=1", "layer=2"), dropout=0.0)
    cfg = tc.model_config()
    batch = train_mod.device_batch(train_batch(2, 200, 16, cfg.n_vocab))
    kw = dict(n_mels=cfg.n_mels, label_smoothing=0.0, ctc_weight=0.0, grad_accum=1)
    temp, loss = {}, {}
    for variant, impl in (("rule", getattr(M, name)), ("autodiff", autodiff)):
        monkeypatch.setattr(M, name, impl)  # read when the model is built and traced
        tm = train_mod.init_model(tc, cfg)
        opt = train_mod.optimizer_for(tm, tc, 10)
        temp[variant] = train_mod.train_step.lower(tm, opt, batch, **kw).compile().memory_analysis().temp_size_in_bytes
        loss[variant] = float(train_mod.train_step(tm, opt, batch, **kw)["loss"])
    assert loss["rule"] == loss["autodiff"], loss
    assert temp["rule"] < temp["autodiff"], temp


def test_an_earlier_run_is_neither_mixed_nor_lost(trained_run, cache_dir, tmp_path, capsys):
    """Training into a directory that holds a run: refused (one line naming --resume and --overwrite), nothing
    touched; from scripts/train_flax.py the same, exit code 2."""

    from jax_whisper.runlog import RunDirectoryError

    out, results, _ = trained_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"}
    with pytest.raises(RunDirectoryError, match="holds an earlier run .*--resume.*--overwrite"):
        train_mod.train(tiny_config(cache_dir, out))
    cli = script_main("train_flax")
    assert cli(["--output-dir", str(out), "--cache-dir", str(cache_dir), "--progress", "false"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train_flax: error: ") and err.count("\n") == 0 and "--resume" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"} == before


def test_an_unusable_manifest_ends_scripts_train_flax_with_one_line(tmp_path, capsys):
    """A malformed manifest line (file and line number) and a manifest of missing audio files (counted, then no
    usable utterance): exit code 2 and an error line, no traceback; the run directory is left reusable."""

    import soundfile as sf

    cli = script_main("train_flax")
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "a.wav", np.zeros(8000, np.float32), 16000)
    for split in ("train", "validation", "test"):
        (data / f"{split}.jsonl").write_text(json.dumps({"audio": "gone.wav", "text": "x"}) + "\n")
    args = ["--dataset", f"manifest:{data}", "--model", TINY, "--output-dir", str(tmp_path / "run"),
            "--progress", "false"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        f"train_flax: error: manifest:{data / 'train.jsonl'}: no usable utterances")
    (data / "train.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "x"}) + "\n{not json\n")
    assert cli(args) == 2  # the same directory again: the failed start left no run in it
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (f"train_flax: error: manifest {str(data / 'train.jsonl')!r} line 2: not "
                                            f"JSON (Expecting property name enclosed in double quotes at column 2)")


def test_a_run_whose_checkpoint_lost_data_files_is_one_line_for_evaluate_and_resume(trained_run, tmp_path, capsys):
    """orbax's data files deleted from a copy of a run: scripts/evaluate.py and --resume each end with one line
    naming the checkpoint and the array, exit codes 1 and 2 (orbax alone: a 140-line traceback)."""

    out, results, _ = trained_run
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns(".lock"))
    for data in [*run.glob("best/*/*/ocdbt.process_*/d"), *run.glob("checkpoints/*/*/ocdbt.process_*/d")]:
        shutil.rmtree(data)  # params, opt_state, ... of every step
    assert script_main("evaluate")(["--checkpoint", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"evaluate: error: checkpoint '{run / 'best' / str(results['best_step'])}': the data "
                              f"of '") and err[-1].endswith("is missing (params/ has lost data files)")
    assert not any("Traceback" in line for line in err)
    assert script_main("train_flax")(["--resume", "--output-dir", str(run), "--max-steps", str(results["steps"] + 2),
                              "--progress", "false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"train_flax: error: cannot restore step {results['steps']}: checkpoint ")
    assert "has lost data files" in err[-1] and not any("Traceback" in line for line in err)


def test_the_run_directory_lock_and_overwrite(tmp_path):
    from jax_whisper.runlog import RUN_FILES, RunDirectoryError, claim_run_directory

    d = tmp_path / "run"
    first = claim_run_directory(d, resume=False, overwrite=False)
    with pytest.raises(RunDirectoryError, match=f"in use by another training run \\(process {os.getpid()}"):
        claim_run_directory(d, resume=False, overwrite=False)  # a second open file: flock refuses it too
    first.close()  # the first run ended (or died): the lock is free again
    (d / "checkpoints" / "5").mkdir(parents=True)
    (d / "metrics.jsonl").write_text("{}\n")
    (d / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match=r"holds an earlier run \(checkpoints, metrics.jsonl\)"):
        claim_run_directory(d, resume=False, overwrite=False)
    claim_run_directory(d, resume=True, overwrite=False).close()  # continuing it is fine
    claim_run_directory(d, resume=False, overwrite=True).close()
    assert not any((d / name).exists() for name in RUN_FILES) and (d / "notes.txt").read_text() == "mine"


def test_resume_takes_the_stored_run_and_refuses_conflicting_flags(trained_run):
    import argparse

    from jax_whisper.config import add_config_arguments, config_from_args

    out, _, _ = trained_run
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    stored = TrainConfig.from_dict(json.loads((out / "config.json").read_text())["train"])
    tc = config_from_args(p.parse_args(["--resume", "--output-dir", str(out), "--max-steps", "30"]))
    assert tc == dataclasses.replace(stored, max_steps=30, resume=True)  # its model too, without --model
    assert tc.model == TINY and tc.preset == "seed-cpu"
    with pytest.raises(ValueError, match=r"--batch-size 8 \(the run has 4\)"):
        config_from_args(p.parse_args(["--resume", "--output-dir", str(out), "--batch-size", "8"]))
