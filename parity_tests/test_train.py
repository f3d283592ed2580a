"""The two trainers, step for step: PyTorch reference (torch_reference/train.py) vs Flax (jax_whisper/train.py).

From identical initial weights, on identical pipeline batches (one :class:`jax_whisper.pipeline.Plan` over a small
synthetic eSpeak corpus), with dropout off and both losses on (label-smoothed token cross-entropy + CTC), every
step's loss, token cross-entropy and CTC loss must agree within 1e-3 relative over 20 AdamW steps (warmup, peak,
cosine decay). Plus: gradient accumulation is exact, and the torch CTC per-sequence loss is optax's.
"""

from __future__ import annotations

import copy
import dataclasses

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from jax_whisper import train as jtrain
from jax_whisper.config import TrainConfig, WhisperConfig
from jax_whisper.convert import flax_to_torch, torch_to_flax
from jax_whisper.datasets import SAMPLE_RATE, open_dataset
from jax_whisper.pipeline import Plan, quantile_buckets
from jax_whisper.tokenizer import CTC_CHARS, get_tokenizer
from parity_tests.helpers import check_close, random_torch_model
from torch_reference import train as ttrain

CFG = dataclasses.replace(
    WhisperConfig.preset("seed"), n_audio_state=128, n_text_state=128, n_audio_head=2, n_text_head=2,
    n_audio_layer=2, n_text_layer=2, dropout=0.0, attn_dropout=0.0,
)
RECIPE = dict(max_lr=1e-3, warmup_steps=5, total_steps=20, weight_decay=0.01, b1=0.9, b2=0.98, eps=1e-6)
LOSS = dict(label_smoothing=0.1, ctc_weight=0.3)
CTC_ONLY_STEPS = 5  # the first steps train encoder + CTC head alone, as the CPU recipe does
BATCH, STEPS = 8, 20


@pytest.fixture(autouse=True)
def one_torch_thread():
    """torch on one thread while these tests run: on a 2-core machine that is busy with other work, two
    intra-op threads make the eager torch step ~9x slower (they wait on each other); results do not change."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """48 training utterances of the synthetic corpus, built once per session in a temporary cache."""
    return open_dataset("synthetic", "train", cache_dir=tmp_path_factory.mktemp("corpus"), n_train=48, n_val=8,
                        n_test=8, max_seconds=CFG.n_frames * 160 / SAMPLE_RATE)


def make_plan(corpus, seed: int) -> Plan:
    buckets = quantile_buckets(corpus.durations(), CFG.n_frames, 2)  # two shapes: two compilations on the Flax side
    return Plan(corpus, get_tokenizer(CFG), n_text_ctx=CFG.n_text_ctx, buckets=buckets, batch_size=BATCH, seed=seed,
                curriculum_epochs=1)


def torch_model(seed: int) -> ttrain.TrainModel:
    torch.manual_seed(seed)
    tm = ttrain.TrainModel(ttrain.Whisper(CFG), ttrain.CTCHead(CFG.n_audio_state, len(CTC_CHARS)))
    with torch.no_grad():  # perturb biases and LayerNorms away from 0 / 1 so a mis-mapped one would show
        for name, p in tm.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.02)
            elif "ln" in name.split(".")[-2]:
                p.add_(torch.randn_like(p) * 0.1)
    return tm.train()


def flax_copy(tm: ttrain.TrainModel) -> jtrain.TrainModel:
    """The Flax TrainModel with ``tm``'s weights: Whisper through torch_to_flax, the CTC head by hand."""
    whisper = torch_to_flax(tm.whisper.state_dict(), CFG)
    ctc = nnx.eval_shape(lambda: jtrain.CTCHead(CFG.n_audio_state, len(CTC_CHARS), rngs=nnx.Rngs(0)))
    ctc.proj.kernel = nnx.Param(jnp.asarray(tm.ctc.proj.weight.detach().numpy().T))
    ctc.proj.bias = nnx.Param(jnp.asarray(tm.ctc.proj.bias.detach().numpy()))
    jm = jtrain.TrainModel(whisper, ctc)
    jm.train()
    return jm


def test_twenty_training_steps_agree(corpus, seed):
    plan = make_plan(corpus, seed)
    batches = [plan.collate(*plan.step(s)) for s in range(STEPS)]
    ttm = torch_model(seed)
    jtm = flax_copy(ttm)
    opt, sched = ttrain.make_optimizer(ttm, **RECIPE)
    joptimizer = nnx.Optimizer(jtm, jtrain.make_optimizer(**RECIPE, clip_norm=1.0), wrt=nnx.Param)

    worst = dict.fromkeys(("loss", "ce", "ctc", "accuracy", "grad_norm"), 0.0)
    schedule = TrainConfig(ctc_weight=LOSS["ctc_weight"], ctc_only_steps=CTC_ONLY_STEPS)  # CTC alone, then hybrid
    for step, b in enumerate(batches, 1):
        loss = {**LOSS, "ctc_weight": schedule.ctc_weight_at(step)}
        tmet = ttrain.train_step(ttm, opt, sched, ttrain.torch_batch(b), n_mels=CFG.n_mels, **loss, grad_accum=1,
                                 clip_norm=1.0)
        jmet = {k: float(v) for k, v in jtrain.train_step(jtm, joptimizer, jtrain.device_batch(b), n_mels=CFG.n_mels,
                                                          **loss, grad_accum=1).items()}
        assert tmet["tokens"] == jmet["tokens"], f"step {step}: token counts differ (seed {seed})"
        if step <= CTC_ONLY_STEPS:  # the decoder is not run
            assert tmet["ctc"] > 0 and tmet["ce"] == jmet["ce"] == 0, f"step {step}: CTC only ({tmet}, seed {seed})"
        else:
            assert tmet["ctc"] > 0 and tmet["ce"] > 0, f"step {step}: both loss terms must be on ({tmet}, seed {seed})"
        for k in worst:
            worst[k] = max(worst[k], abs(tmet[k] - jmet[k]) / max(abs(jmet[k]), 1e-12))
        for k in ("loss", "ce", "ctc"):
            check_close(tmet[k], jmet[k], what=f"trainer step {k} (20 steps)", seed=seed, rel_l2=1e-3)
        check_close(tmet["grad_norm"], jmet["grad_norm"], what="trainer step grad_norm (20 steps)", seed=seed,
                    rel_l2=1e-2)
        check_close(tmet["accuracy"], jmet["accuracy"], what="trainer step accuracy (20 steps)", seed=seed)
    params = {**flax_to_torch(jtm.whisper), "ctc.proj.weight": torch.tensor(np.array(jtm.ctc.proj.kernel[...]).T),
              "ctc.proj.bias": torch.tensor(np.array(jtm.ctc.proj.bias[...]))}
    theirs = {**ttm.whisper.state_dict(), **{f"ctc.{k}": v for k, v in ttm.ctc.state_dict().items()}}
    worst_param = max(check_close(theirs[k], params[k], what="trainer params after 20 steps", seed=seed,
                                   rel_l2=1e-3)[0]
                      for k in params)
    print(f"\nmax relative difference over {STEPS} steps (seed {seed}): "
          + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()) + f"; params after (rel L2) {worst_param:.2e}")
    assert worst["loss"] <= 1e-3, worst


def test_grad_accum_is_exact(corpus, seed):
    """Two micro-batches with the full batch's normalisers: the same loss and parameters as one batch."""
    plan = make_plan(corpus, seed)
    batches = [ttrain.torch_batch(plan.collate(*plan.step(s))) for s in range(3)]
    one = torch_model(seed)
    two = copy.deepcopy(one)
    runs = []
    for tm, accum in ((one, 1), (two, 2)):
        opt, sched = ttrain.make_optimizer(tm, **RECIPE)
        runs.append([ttrain.train_step(tm, opt, sched, b, n_mels=CFG.n_mels, **LOSS, grad_accum=accum, clip_norm=1.0)
                     for b in batches])
    for m1, m2 in zip(*runs, strict=True):
        for k in ("loss", "ce", "ctc", "accuracy"):
            check_close(m2[k], m1[k], what=f"grad_accum=2 vs 1: {k}", seed=seed, rel_l2=1e-5)
        # the norm is a sum of squares dominated by few entries: float32 summation order shows more in it
        check_close(m2["grad_norm"], m1["grad_norm"], what="grad_accum=2 vs 1: grad_norm", seed=seed, rel_l2=1e-4)
    for p1, p2 in zip(one.parameters(), two.parameters(), strict=True):
        check_close(p2, p1, what="grad_accum=2 vs 1: params after 3 steps", seed=seed, rel_l2=1e-5)


def test_ctc_loss_is_optax(seed):
    """Per-sequence CTC NLL: torch's F.ctc_loss (input_lengths) equals optax.ctc_loss (logit_paddings), with
    garbage in the padded frames, repeated labels and a row that needs every frame."""
    rng = np.random.default_rng(seed)
    n_batch, n_frames, n_labels, n_chars = 5, 30, 9, len(CTC_CHARS)
    logits = rng.normal(0, 2, (n_batch, n_frames, n_chars)).astype(np.float32)
    frames = np.array([30, 24, 17, 9, 12])
    label_len = np.array([9, 6, 8, 4, 1])
    labels = rng.integers(1, n_chars, (n_batch, n_labels)).astype(np.int32)
    labels[0, 3] = labels[0, 2]  # repeats: they need a blank between them
    labels[2, 1:4] = labels[2, 0]
    for r, n in enumerate(label_len):
        labels[r, n:] = 0
        logits[r, frames[r]:] = rng.normal(0, 50, (n_frames - frames[r], n_chars))  # must not count
    label_paddings = (np.arange(n_labels)[None] >= label_len[:, None]).astype(np.float32)
    logit_paddings = (np.arange(n_frames)[None] >= frames[:, None]).astype(np.float32)

    want = np.asarray(optax.ctc_loss(jnp.asarray(logits), jnp.asarray(logit_paddings), jnp.asarray(labels),
                                     jnp.asarray(label_paddings)))
    got = ttrain.ctc_per_row(torch.from_numpy(logits), torch.from_numpy(frames), torch.from_numpy(labels),
                             torch.from_numpy(label_len))
    _, _, ok = ttrain.ctc_lengths(torch.from_numpy(frames * 320), torch.from_numpy(labels),
                                  torch.from_numpy(label_paddings), torch.ones(n_batch, dtype=torch.bool))
    assert ok.all(), "every row is alignable"
    check_close(got, want, what="CTC per-sequence NLL vs optax", seed=seed, rel_l2=1e-5)
    for r in range(n_batch):
        check_close(got[r], want[r], what="CTC per-sequence NLL vs optax (per row)", seed=seed, rel_l2=1e-5)


# ---- fine-tuning (issue 19) -------------------------------------------------------------------------------------

# a small "pretrained" English-only model: tiny.en's vocabulary and tokenizer, the corpus's 5 s as its window
PRETRAINED = dataclasses.replace(
    WhisperConfig.preset("tiny.en"), n_audio_ctx=CFG.n_audio_ctx, n_audio_state=64, n_text_state=64, n_audio_head=2,
    n_text_head=2, n_audio_layer=2, n_text_layer=2, n_text_ctx=64)


@pytest.mark.parametrize("freeze_encoder", [False, True], ids=["full", "frozen-encoder"])
def test_twenty_finetuning_steps_agree(corpus, seed, tmp_path, freeze_encoder):
    """Both trainers --init-from the same OpenAI .pt (random weights, biases and LayerNorms perturbed), through
    each backend's ``load_initial`` and ``init_model``, on the batches of the run's own window plan (audio padded
    to the window, text-length buckets, the .en prompt): 20 steps of the finetune recipe (lr raised to 1e-3 with
    5 warmup steps so 20 steps move the weights), dropout off, every step's loss within 1e-3 relative, the
    parameters after them within 1e-3 rel-L2; a frozen encoder stays bit for bit the checkpoint's on both sides."""
    from jax_whisper.convert import save_checkpoint
    from jax_whisper.loop import run_tokenizer
    from jax_whisper.pipeline import run_plans

    source = random_torch_model(PRETRAINED, seed)
    pt = save_checkpoint(torch_to_flax(source.state_dict(), PRETRAINED), PRETRAINED, tmp_path / "pretrained.pt",
                         format="openai")
    tc = TrainConfig.recipe("finetune", init_from=str(pt), freeze_encoder=freeze_encoder, batch_size=BATCH,
                            max_lr=1e-3, warmup_steps=5, seed=seed)
    fb, tb = jtrain.FlaxBackend(), ttrain.TorchBackend()
    cfg = tc.model_config(fb.load_initial(tc.init_from))
    assert tc.model_config(tb.load_initial(tc.init_from)) == cfg == PRETRAINED, f"seed {seed}"
    jtm = jtrain.init_model(tc, cfg, fb.initial)
    ttm = ttrain.init_model(tc, cfg, tb.initial)
    jopt = jtrain.optimizer_for(jtm, tc, STEPS)
    topt, tsched = ttrain.optimizer_for(ttm, tc, STEPS)
    tokenizer = run_tokenizer(tc, cfg)
    plan = run_plans(tc, cfg, tokenizer, {"train": corpus, "validation": corpus, "test": corpus})["train"]
    assert {f for f, _ in plan.shapes()} == {cfg.n_frames} and tokenizer.sot_sequence_including_notimestamps == (
        50257, 50362), f"seed {seed}"
    worst = 0.0
    for step in range(STEPS):
        b = plan.collate(*plan.step(step))
        loss = dict(n_mels=cfg.n_mels, label_smoothing=tc.label_smoothing, ctc_weight=0.0, grad_accum=1)
        tmet = ttrain.train_step(ttm, topt, tsched, ttrain.torch_batch(b), **loss, clip_norm=tc.clip_norm)
        jmet = {k: float(v) for k, v in jtrain.train_step(jtm, jopt, jtrain.device_batch(b), **loss,
                                                          freeze_encoder=freeze_encoder).items()}
        for k in ("loss", "ce"):
            check_close(tmet[k], jmet[k], what=f"fine-tuning step {step + 1} {k}", seed=seed, rel_l2=1e-3)
        worst = max(worst, abs(tmet["loss"] - jmet["loss"]) / jmet["loss"])
    start = source.state_dict()
    ours, theirs = flax_to_torch(jtm.whisper), ttm.whisper.state_dict()
    for k, v in ours.items():
        if freeze_encoder and k.startswith("encoder."):
            assert torch.equal(v, start[k]) and torch.equal(theirs[k], start[k]), f"{k} moved (seed {seed})"
        else:
            check_close(theirs[k], v, what=f"fine-tuned {k} after {STEPS} steps", seed=seed, rel_l2=1e-3)
    moved = max(float((ours[k] - start[k]).abs().max()) for k in ours if k.startswith("decoder."))
    assert moved > 1e-3, f"the decoder hardly moved ({moved:.1e}; seed {seed})"
    print(f"\nfine-tuning ({'frozen encoder' if freeze_encoder else 'full'}), max relative loss difference over "
          f"{STEPS} steps (seed {seed}): {worst:.2e}")
