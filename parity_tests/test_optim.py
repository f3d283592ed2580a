"""torch.optim.AdamW vs optax: the seed recipe's optimizer (weight decay, global-norm clipping, warmup + cosine)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from jax_whisper.convert import flax_to_torch, torch_to_flax
from jax_whisper.train import IGNORE_INDEX, TrainModel, lr_schedule, make_optimizer, train_step
from parity_tests.helpers import check_close, random_inputs, random_torch_model
from torch_reference.train import cross_entropy as torch_cross_entropy
from torch_reference.train import lr_factor
from torch_reference.train import make_optimizer as torch_make_optimizer

# the seed recipe, with a short warmup/cosine so three steps cover warmup, peak and decay
RECIPE = dict(max_lr=2e-4, warmup_steps=2, total_steps=4, weight_decay=0.01, b1=0.9, b2=0.98, eps=1e-6)


def test_schedules_agree():
    for warmup, total, end in [(2, 4, 0.0), (100, 1000, 0.1), (0, 10, 0.0)]:
        sched = lr_schedule(max_lr=2e-4, warmup_steps=warmup, total_steps=total, end_lr_ratio=end)
        for step in range(0, total + 5):
            want = 2e-4 * lr_factor(step, warmup_steps=warmup, total_steps=total, end_lr_ratio=end)
            assert float(sched(step)) == pytest.approx(want, rel=1e-6, abs=1e-12), (warmup, total, step)
    assert lr_factor(0, warmup_steps=5, total_steps=50) == 0.0
    assert lr_factor(5, warmup_steps=5, total_steps=50) == 1.0


def test_adamw_on_identical_gradients(seed):
    """The optimizers alone: the same gradients (large enough that clipping acts) into both, three steps.

    The torch side runs in float64 so its update (params after - before) is not swamped by float32 rounding of
    params ~1 (ulp 1.2e-7 against updates ~3e-4); optax's float32 updates are summed as returned.
    """
    rng = np.random.default_rng(seed)
    shapes = {"w": (8, 5), "emb": (11, 4), "b": (5,), "ln": (4,)}
    params0 = {k: rng.normal(0, 1, s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.normal(0, 3, s).astype(np.float32) for k, s in shapes.items()} for _ in range(3)]

    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.astype(np.float64))) for k, v in params0.items()}
    module = torch.nn.Module()
    for k, p in tparams.items():
        module.register_parameter(k, p)
    opt, sched = torch_make_optimizer(module, **RECIPE)
    tx = make_optimizer(**RECIPE, clip_norm=1.0)
    jparams = {k: jnp.asarray(v) for k, v in params0.items()}
    total_update = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    state = tx.init(jparams)
    for g in grads:
        for k, p in tparams.items():
            p.grad = torch.from_numpy(g[k].astype(np.float64))
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, jparams)
        jparams = optax.apply_updates(jparams, updates)
        total_update = {k: total_update[k] + np.asarray(updates[k]) for k in shapes}
    for k in shapes:
        t = tparams[k].detach().numpy()
        check_close(jparams[k], t, what="AdamW params after 3 steps (same grads)", seed=seed, rel_l2=1e-5)
        check_close(total_update[k], t - params0[k], what="AdamW total update after 3 steps (same grads)",
                    seed=seed, rel_l2=1e-5)
    # weight decay reaches matrices only: its share of the update is -lr * wd * p
    assert np.abs(total_update["w"]).max() > 0 and np.abs(total_update["b"]).max() > 0


@pytest.mark.parametrize("preset", ["seed", "tiny"])
def test_three_training_steps(preset, seed):
    """Each framework computes its own loss and gradients on its own copy of the weights and takes three AdamW
    steps (clip 1.0, decay 0.01, warmup/cosine); the parameters afterwards agree."""
    from jax_whisper.config import WhisperConfig

    cfg = WhisperConfig.preset(preset)
    tm = random_torch_model(cfg, seed)  # eval mode: dropout off, so both see the same function
    jm = torch_to_flax(tm.state_dict(), cfg)
    before = {k: v.clone() for k, v in tm.state_dict().items()}
    batches = []
    for i in range(3):
        mel, tokens = random_inputs(cfg, seed + i, n_frames=min(cfg.n_frames, 300), n_tokens=16)
        targets = np.roll(tokens, -1, axis=1)
        targets[:, -2:] = IGNORE_INDEX
        batches.append((mel, tokens, targets))

    opt, sched = torch_make_optimizer(tm, **RECIPE)
    for mel, tokens, targets in batches:
        opt.zero_grad()
        total, count = torch_cross_entropy(tm(torch.from_numpy(mel), torch.from_numpy(tokens)),
                                           torch.from_numpy(targets))
        (total / count).backward()
        torch.nn.utils.clip_grad_norm_(tm.parameters(), 1.0)
        opt.step()
        sched.step()

    tm_flax = TrainModel(jm)  # the trainer's step, without the optional CTC head
    optimizer = nnx.Optimizer(tm_flax, make_optimizer(**RECIPE, clip_norm=1.0), wrt=nnx.Param)
    for mel, tokens, targets in batches:
        n = mel.shape[0]
        batch = {"mel": mel, "tokens": tokens, "targets": targets, "n_samples": np.zeros(n, np.int32),
                 "ctc_labels": np.zeros((n, 1), np.int32), "ctc_paddings": np.ones((n, 1), np.float32),
                 "valid": np.ones(n, bool)}
        train_step(tm_flax, optimizer, batch, n_mels=cfg.n_mels, label_smoothing=0.0, ctc_weight=0.0, grad_accum=1)

    after = flax_to_torch(jm)
    moved = 0
    for name, t in tm.state_dict().items():
        check_close(after[name], t, what="params after 3 train steps", seed=seed, rel_l2=1e-5)
        if name in dict(tm.named_parameters()):
            # the movement itself; float32 rounding of params against updates ~lr leaves ~5e-5 of it
            check_close(after[name] - before[name], t - before[name], what="update after 3 train steps",
                        seed=seed, rel_l2=1e-3)
        moved += int(not torch.equal(t, before[name]))
    assert moved == len(list(tm.parameters())), "every parameter was updated"
