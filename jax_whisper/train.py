"""Training pieces for the Flax model: the token loss and the optimizer (the seed recipe's AdamW).

``torch_reference/train.py`` holds the same two pieces for the PyTorch reference; the parity suite checks that
they compute the same loss, gradients and parameter updates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import Array

IGNORE_INDEX = -100  # target id excluded from the loss (padding)


def cross_entropy(logits: Array, targets: Array, *, label_smoothing: float = 0.0) -> tuple[Array, Array]:
    """Token cross-entropy: ``(sum of losses, number of counted tokens)``; targets == IGNORE_INDEX are skipped.

    Label smoothing as torch's ``F.cross_entropy``: ``(1 - s) * nll + s * mean over classes of -log p``.
    Returning the sum and count (not the mean) lets gradient accumulation and data-parallel shards weight
    every token equally.
    """
    mask = targets != IGNORE_INDEX
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(mask, targets, 0)[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(axis=-1)
    return jnp.sum(jnp.where(mask, nll, 0.0)), jnp.sum(mask)


def lr_schedule(*, max_lr: float, warmup_steps: int, total_steps: int, end_lr_ratio: float = 0.0):
    """Linear warmup from 0 to ``max_lr``, then cosine decay to ``max_lr * end_lr_ratio`` at ``total_steps``.

    Written out rather than optax's ``warmup_cosine_decay_schedule``, whose warmup is computed as
    ``peak - peak * (1 - t)`` and loses ~1e-5 relative to cancellation in float32 early in warmup.
    """
    decay_steps = max(total_steps, warmup_steps + 1) - warmup_steps

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = step / max(warmup_steps, 1)
        progress = jnp.clip(step - warmup_steps, 0, decay_steps) / decay_steps
        cos = end_lr_ratio + (1.0 - end_lr_ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return max_lr * jnp.where(step < warmup_steps, warm, cos)

    return schedule


def decay_mask(params):
    """Weight decay on matrices and embeddings only (not biases, LayerNorm, or 1-D vectors)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(*, max_lr: float, warmup_steps: int, total_steps: int, weight_decay: float = 0.01,
                   b1: float = 0.9, b2: float = 0.98, eps: float = 1e-6, clip_norm: float | None = 1.0,
                   end_lr_ratio: float = 0.0) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay) after global-norm gradient clipping, on a warmup + cosine schedule."""
    schedule = lr_schedule(max_lr=max_lr, warmup_steps=warmup_steps, total_steps=total_steps,
                           end_lr_ratio=end_lr_ratio)
    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    return adamw if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adamw)


@nnx.jit(static_argnames="label_smoothing")
def train_step(model, optimizer: nnx.Optimizer, mel: Array, tokens: Array, targets: Array, *,
               label_smoothing: float = 0.0) -> Array:
    """One optimizer step on the mean token loss of the batch; returns that loss."""

    def loss_fn(m):
        total, count = cross_entropy(m(mel, tokens), targets, label_smoothing=label_smoothing)
        return total / count

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def smoke_run(*, preset: str = "seed", steps: int = 30, batch_size: int = 8, n_utterances: int = 64,
              max_lr: float = 1e-3, warmup_steps: int = 5, seed: int = 0, cache_dir=None, log=print) -> list[float]:
    """A short real training run: ``steps`` AdamW steps of the ``preset`` model on a small eSpeak corpus.

    The set-up check the README's first command runs until the full trainer (grain pipeline, checkpoints,
    validation WER) replaces it. Returns the per-step training losses.
    """
    import numpy as np

    from jax_whisper import synthetic
    from jax_whisper.audio import HOP_LENGTH, load_audio, log_mel_spectrogram, pad_or_trim
    from jax_whisper.config import WhisperConfig
    from jax_whisper.model import Whisper
    from jax_whisper.tokenizer import get_tokenizer

    cfg = WhisperConfig.preset(preset)
    tok = get_tokenizer(cfg)
    manifests = synthetic.ensure_corpus(cache_dir, n_train=n_utterances, n_val=8, n_test=8, seed=seed)
    rows = synthetic.load_manifest(manifests["train"])
    pairs = [tok.encode_transcript(r["text"], cfg.n_text_ctx) for r in rows]
    kept = [(r, p) for r, p in zip(rows, pairs, strict=True) if p is not None]
    log(f"corpus {manifests['train'].parent}: {len(kept)} utterances ({len(rows) - len(kept)} dropped: too long)")
    audio = np.stack([pad_or_trim(load_audio(r["audio"]), cfg.n_frames * HOP_LENGTH) for r, _ in kept])
    mels = np.asarray(log_mel_spectrogram(audio, n_mels=cfg.n_mels))
    tokens, targets = tok.pad_batch([p for _, p in kept], cfg.n_text_ctx)

    model = Whisper(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    model.train()
    optimizer = nnx.Optimizer(model, make_optimizer(max_lr=max_lr, warmup_steps=warmup_steps, total_steps=steps),
                              wrt=nnx.Param)

    rng = np.random.default_rng(seed)
    losses = []
    for step in range(steps):
        idx = rng.choice(len(kept), size=min(batch_size, len(kept)), replace=False)
        loss = float(train_step(model, optimizer, mels[idx], tokens[idx], targets[idx]))
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}")
        losses.append(loss)
        log(f"step {step + 1}/{steps} loss {loss:.3f}")
    return losses
