"""Fine-tuning from a checkpoint (``--init-from``) on a shrunk model: the checkpoint's dims, tokenizer and full audio
window, the step-0 evaluation, a frozen encoder (no gradients, no optimizer state, the decoder's update unchanged),
and the flags that cannot work together."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_whisper import train as train_mod
from jax_whisper.config import PRESETS, RunConfigError, TrainConfig
from jax_whisper.convert import flax_to_numpy, load_checkpoint, save_checkpoint
from jax_whisper.datasets import DataError, open_dataset
from jax_whisper.model import Whisper

ROOT = Path(__file__).resolve().parents[1]
CORPUS = dict(n_train=40, n_val=8, n_test=8)
# tiny.en's vocabulary and text context with a small body and a 5 s window (500 mel frames): cheap to run
SMALL = dataclasses.replace(PRESETS["tiny.en"], n_audio_ctx=250, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                            n_text_state=64, n_text_head=2, n_text_layer=1, n_text_ctx=64)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    open_dataset("synthetic", "train", cache_dir=d, **CORPUS)
    return d


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A random-weight English-only checkpoint in openai-whisper's .pt format (what --init-from reads)."""
    model = Whisper(SMALL, rngs=nnx.Rngs(7))
    return save_checkpoint(model, SMALL, tmp_path_factory.mktemp("init") / "small.en.pt", format="openai")


def finetune_config(cache_dir, out, init, **kw) -> TrainConfig:
    base = dict(init_from=str(init), cache_dir=str(cache_dir), **CORPUS, batch_size=4, eval_batch_size=8,
                max_steps=4, eval_every=2, warmup_steps=1, output_dir=str(out), progress=False, tensorboard=False)
    return TrainConfig.recipe("finetune", **{**base, **kw})


@pytest.fixture(scope="module")
def frozen_run(cache_dir, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft")
    lines = []
    results = train_mod.train(finetune_config(cache_dir, out, pretrained, freeze_encoder=True), log=lines.append)
    return out, results, lines


def test_a_run_from_a_checkpoint_keeps_its_model_window_and_tokenizer(frozen_run, pretrained):
    out, results, lines = frozen_run
    assert results["status"] == "completed"
    stored = json.loads((out / "config.json").read_text())
    assert stored["model"] == json.loads(SMALL.to_json())  # the checkpoint's dims, dropout from the flags (0)
    assert stored["train"]["init_from"] == str(pretrained) and stored["train"]["preset"] is None
    # every batch holds the whole 5 s window; the buckets are text lengths
    shapes = next(line for line in lines if line.startswith("buckets (frames, tokens)"))
    frames = [int(f) for f in __import__("re").findall(r"\((\d+), \d+\)", shapes)]
    assert frames and set(frames) == {SMALL.n_frames}, shapes
    assert any(line.startswith("initial weights: ") for line in lines)


def test_the_step_0_evaluation_is_recorded_beside_the_final_one(frozen_run):
    out, results, _ = frozen_run
    on_disk = json.loads((out / "results.json").read_text())
    for key in ("initial_test_wer", "initial_test_wer_heldout_voices", "initial_test_wer_train_voices",
                "test_wer"):
        assert key in on_disk and on_disk[key] >= 0, key
    assert [h["step"] for h in results["history"]] == [0, 2, 4]
    assert results["history"][0]["wall_minutes"] >= 0


def test_a_frozen_encoder_is_not_trained(frozen_run, pretrained):
    """After the run the encoder's weights are the checkpoint's, bit for bit; the decoder's moved."""
    out, _, _ = frozen_run
    _, before = load_checkpoint(pretrained)
    _, after = load_checkpoint(out / "checkpoints" / "4")
    a, b = flax_to_numpy(before), flax_to_numpy(after)
    enc = [k for k in a if k.startswith("encoder.")]
    dec = [k for k in a if k.startswith("decoder.")]
    assert enc and all(np.array_equal(a[k], b[k]) for k in enc)
    assert any(not np.array_equal(a[k], b[k]) for k in dec)


def _batch(cfg, rows: int = 4, text: int = 16, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    samples = cfg.n_frames * 160
    targets = rng.integers(0, cfg.n_vocab, (rows, text)).astype(np.int32)
    targets[:, -3:] = train_mod.IGNORE_INDEX
    return {k: jnp.asarray(v) for k, v in {
        "audio": (0.1 * rng.standard_normal((rows, samples))).astype(np.float32),
        "n_samples": np.full(rows, samples, np.int32), "tokens": rng.integers(0, cfg.n_vocab, (rows, text)),
        "targets": targets, "ctc_labels": np.zeros((rows, 8), np.int32),
        "ctc_paddings": np.ones((rows, 8), np.float32), "valid": np.ones(rows, bool)}.items()}


def _opt_leaves(opt) -> dict:
    """The optimizer state's arrays by path (``opt_state/0/mu/decoder/...``)."""
    return {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(opt)))}


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_frozen_encoder_step_updates_the_decoder_as_the_full_step(grad_accum):
    """One step with the encoder frozen against one of the whole model: the optimizer holds no encoder state,
    the encoder does not move, and every decoder parameter gets the same gradient (AdamW's first moment after
    one step is 0.1 x the gradient) and the same update as in the full step (its gradient does not depend on
    whether the encoder's is taken; clipping is off so the global norm, which the encoder's gradients enter,
    plays no part). One step only: after it the full run's encoder has moved, so its decoder sees other inputs."""
    seed = 3
    batch = _batch(SMALL, seed=seed)
    ends, moments = {}, {}
    for freeze in (False, True):
        tc = TrainConfig.recipe("finetune", init_from="x", freeze_encoder=freeze, clip_norm=None, max_lr=1e-3,
                                warmup_steps=0, grad_accum=grad_accum)
        tm = train_mod.init_model(tc, SMALL, Whisper(SMALL, rngs=nnx.Rngs(seed)))
        opt = train_mod.optimizer_for(tm, tc, total_steps=10)
        assert freeze == (not any("encoder" in p for p in _opt_leaves(opt))), f"seed {seed}"
        train_mod.train_step(tm, opt, batch, n_mels=SMALL.n_mels, label_smoothing=0.0, ctc_weight=0.0,
                             grad_accum=grad_accum, freeze_encoder=freeze)
        ends[freeze] = flax_to_numpy(tm.whisper)
        moments[freeze] = {p: np.asarray(v) for p, v in _opt_leaves(opt).items() if "/mu/" in p}
    assert moments[True] and set(moments[True]) < set(moments[False]), f"seed {seed}"
    for k, mu in moments[True].items():
        ref = moments[False][k]
        err, scale = np.max(np.abs(mu - ref)), np.max(np.abs(ref))
        assert scale > 0 and err <= 1e-5 * scale, f"first moment {k}: max-abs {err:.2e} of {scale:.2e} (seed {seed})"
    start = flax_to_numpy(Whisper(SMALL, rngs=nnx.Rngs(seed)))
    for k, v in ends[True].items():
        if k.startswith("encoder."):
            assert np.array_equal(v, start[k]), f"{k} moved (seed {seed})"
        else:
            full = ends[False][k]
            err = np.max(np.abs(v - full))
            moved = np.max(np.abs(full - start[k]))
            assert moved > 0 and err <= 1e-6 + 1e-4 * moved, f"{k}: max-abs {err:.2e} of an update {moved:.2e} " \
                                                             f"(seed {seed})"


def test_flags_that_cannot_work_are_refused(pretrained, cache_dir, tmp_path):
    with pytest.raises(RunConfigError, match="--preset with --init-from"):
        TrainConfig(init_from="x", preset="tiny").model_config(SMALL)
    with pytest.raises(RunConfigError, match="--model with --init-from"):
        TrainConfig(init_from="x", model="n_text_layer=2").model_config(SMALL)
    with pytest.raises(RunConfigError, match="--freeze-encoder with the CTC loss"):
        TrainConfig(freeze_encoder=True, ctc_weight=0.3)
    with pytest.raises(RunConfigError, match="need --init-from"):
        TrainConfig(language="fr").model_config()
    with pytest.raises(RunConfigError, match="English-only"):
        train_mod.train(finetune_config(cache_dir, tmp_path / "a", pretrained, language="fr"))
    with pytest.raises(RunConfigError, match="--init-from: .*not a recognised format"):
        (tmp_path / "notes.txt").write_text("not a model")
        train_mod.train(finetune_config(cache_dir, tmp_path / "b", tmp_path / "notes.txt"))


def test_timestamp_targets_train_and_are_refused_where_they_cannot_work(pretrained, cache_dir, tmp_path):
    """--timestamps 1: every training row in Whisper's timestamped form (the synthetic corpus knows each utterance's
    speech times), the run completes; refused for the seed vocabulary, for a dataset without speech times and
    outside 0..1."""
    from jax_whisper.loop import run_tokenizer
    from jax_whisper.pipeline import open_splits, run_plans

    tc = finetune_config(cache_dir, tmp_path / "ts", pretrained, timestamps=1.0, max_steps=2, eval_every=2)
    tok = run_tokenizer(tc, SMALL)
    plan = run_plans(tc, SMALL, tok, open_splits(tc, SMALL))["train"]
    assert plan.stats.untimed == 0
    batch = plan.collate(*plan.step(0), epoch=0)
    assert list(batch["tokens"][:, 1]) == [
        tok.timestamp_token(plan.source.metadata(plan.items[k].index).span[0], math.floor) for k in plan.step(0)[1]]
    assert train_mod.train(tc)["status"] == "completed"
    with pytest.raises(RunConfigError, match="--timestamps 0.5: the .seed. vocabulary has no timestamp"):
        run_plans(TrainConfig(timestamps=0.5), PRESETS["seed"], run_tokenizer(TrainConfig(), PRESETS["seed"]), {})
    base = next(Path(cache_dir).glob("v*"))
    rows = [json.loads(line) for line in (base / "train.jsonl").read_text().splitlines()]
    manifest = tmp_path / "untimed.jsonl"
    manifest.write_text("".join(json.dumps({"audio": str(base / r["audio"]), "text": r["text"]}) + "\n"
                                for r in rows))
    untimed = dataclasses.replace(tc, dataset=f"manifest:{manifest}", train_split="train", val_split="train",
                                  test_split="train")
    with pytest.raises(DataError, match="gives no utterance's speech times"):
        run_plans(untimed, SMALL, tok, open_splits(untimed, SMALL))
    with pytest.raises(RunConfigError, match="--timestamps 1.5: expected a fraction"):
        TrainConfig(timestamps=1.5)


def test_a_multilingual_checkpoint_trains_with_its_language_prompt(cache_dir, tmp_path):
    """--language / --task on a multilingual checkpoint: the prompt is <|startoftranscript|><|lang|><|task|>
    <|notimestamps|>; an unknown language is refused by name."""
    from jax_whisper.loop import run_tokenizer
    from jax_whisper.tokenizer import get_tokenizer

    multi = dataclasses.replace(SMALL, n_vocab=PRESETS["tiny"].n_vocab)
    tok = run_tokenizer(TrainConfig(init_from="x", language="de", task="translate"), multi)
    ref = get_tokenizer(multi, language="de", task="translate")
    assert tok.sot_sequence_including_notimestamps == ref.sot_sequence_including_notimestamps
    assert len(tok.sot_sequence_including_notimestamps) == 4
    assert run_tokenizer(TrainConfig(init_from="x"), multi).sot_sequence == get_tokenizer(multi).sot_sequence
    with pytest.raises(RunConfigError, match="--language klingon"):
        run_tokenizer(TrainConfig(init_from="x", language="klingon"), multi)


def test_train_flax_prints_refusals_in_one_line(pretrained, tmp_path, capsys):
    from tests.test_train import script_main

    main = script_main("train_flax")
    assert main(["--init-from", str(pretrained), "--preset", "tiny", "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--preset with --init-from" in err, err
    assert main(["--init-from", str(tmp_path / "missing.pt"), "--output-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--init-from" in err and "missing.pt" in err, err
