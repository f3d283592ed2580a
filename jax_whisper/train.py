"""Training Whisper in Flax: losses, the optimizer (the seed recipe's AdamW), the jitted step, checkpoints, and
the training loop behind ``scripts/train_flax.py``.

``torch_reference/train.py`` mirrors the losses, optimizer and loop for the PyTorch reference; the parity suite
checks that both compute the same loss, gradients and parameter updates. The input pipeline lives in
:mod:`jax_whisper.pipeline`, evaluation (greedy decoding, WER) in :mod:`jax_whisper.evaluate`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import Array, lax

from jax_whisper import parallel
from jax_whisper.audio import log_mel_spectrogram
from jax_whisper.config import RunConfigError, TrainConfig, WhisperConfig
from jax_whisper.convert import num_params
from jax_whisper.formats.native import check_data
from jax_whisper.loop import fit
from jax_whisper.model import Buffer, Whisper
from jax_whisper.pipeline import ARRAY_KEYS, HOP_LENGTH, Plan, iterate_eval
from jax_whisper.runlog import RunDirectoryError
from jax_whisper.scoring import group_wers
from jax_whisper.tokenizer import CTC_CHARS, ctc_decode

IGNORE_INDEX = -100  # target id excluded from the loss (padding)


def cross_entropy(logits: Array, targets: Array, *, label_smoothing: float = 0.0) -> tuple[Array, Array]:
    """Token cross-entropy: ``(sum of losses, number of counted tokens)``; targets == IGNORE_INDEX are skipped.

    Label smoothing as torch's ``F.cross_entropy``: ``(1 - s) * nll + s * mean over classes of -log p``.
    Returning the sum and count (not the mean) lets gradient accumulation and data-parallel shards weight
    every token equally.
    """
    mask = targets != IGNORE_INDEX
    logits = logits.astype(jnp.float32)
    return _token_losses(logits, jnp.where(mask, targets, 0), mask, label_smoothing), jnp.sum(mask)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _token_losses(logits: Array, targets: Array, mask: Array, smoothing: float) -> Array:
    return _token_losses_fwd(logits, targets, mask, smoothing)[0]


def _token_losses_fwd(logits, targets, mask, smoothing):
    # Written out with its gradient (softmax - smoothed one-hot): autodiff of log_softmax + take_along_axis
    # materialises a scatter into zeros and several more (tokens x 50k) temporaries.
    lse = jax.nn.logsumexp(logits, axis=-1)
    nll = lse - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    if smoothing:
        nll = (1.0 - smoothing) * nll + smoothing * (lse - logits.mean(axis=-1))
    return jnp.sum(jnp.where(mask, nll, 0.0)), (logits, targets, mask, lse)


def _token_losses_bwd(smoothing, res, g):
    logits, targets, mask, lse = res
    n_vocab = logits.shape[-1]
    hit = jnp.arange(n_vocab) == targets[..., None]
    d = jnp.exp(logits - lse[..., None]) - jnp.where(hit, 1.0 - smoothing, 0.0) - smoothing / n_vocab
    return jnp.where(mask[..., None], d * g, 0.0), None, None


_token_losses.defvjp(_token_losses_fwd, _token_losses_bwd)


def projected_cross_entropy(x: Array, embedding: Array, targets: Array, *, label_smoothing: float = 0.0,
                            block_rows: int = 4096) -> tuple[Array, Array, Array]:
    """:func:`cross_entropy` of the tied vocabulary projection ``logits = x @ embedding.T`` without keeping the
    logits: ``(sum of losses, counted tokens, argmax hits)``. ``x`` (..., n_state) is the decoder's final
    LayerNorm output in the compute dtype; ``embedding`` (the float32 parameter) is multiplied in that dtype and
    gets its gradient back unrounded, accumulated in float32 like the logits.

    Under differentiation the forward pass also computes the gradients (the loss is a scalar, so the backward
    only scales them): per block of ``block_rows`` rows the logits are formed once, reduced, turned into
    ``softmax - smoothed one-hot`` and multiplied out to ``dx`` and ``d embedding`` at once. Against projecting
    and then :func:`cross_entropy`, no (tokens x vocabulary) tensor is written to memory twice or transposed
    (measured on CPU: docs/performance.md), and memory is bounded by the block.
    """
    mask = targets != IGNORE_INDEX
    x2 = x.reshape(-1, x.shape[-1])
    t, m = jnp.where(mask, targets, 0).reshape(-1), mask.reshape(-1)
    n = x2.shape[0]
    if n > block_rows and n % block_rows:  # whole blocks: padded rows are masked out
        pad = block_rows - n % block_rows
        x2, t, m = (jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in (x2, t, m))
    loss, hits = _projected_losses(x2, embedding, t, m, float(label_smoothing), min(block_rows, n))
    return loss, jnp.sum(mask), hits


def _block_losses(x, embedding, targets, mask, smoothing, with_grad):
    """Losses (and with_grad their gradient ``softmax - smoothed one-hot``) of one block of rows."""
    logits = lax.dot_general(x, embedding, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    n_vocab = logits.shape[-1]
    top = jnp.max(logits, axis=-1)
    e = jnp.exp(logits - top[:, None])
    total = jnp.sum(e, axis=-1)
    lse = top + jnp.log(total)
    hit = jnp.arange(n_vocab) == targets[:, None]
    nll = lse - jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    if smoothing:
        nll = (1.0 - smoothing) * nll + smoothing * (lse - logits.mean(axis=-1))
    loss = jnp.sum(jnp.where(mask, nll, 0.0))
    # jnp.argmax's first-maximum rule as one min-reduction (XLA's CPU argmax is a slow variadic reduce)
    first = jnp.min(jnp.where(logits == top[:, None], jnp.arange(n_vocab), n_vocab), axis=-1)
    hits = jnp.sum(mask & (first == targets))
    if not with_grad:
        return loss, hits, None
    d = e / total[:, None] - jnp.where(hit, 1.0 - smoothing, 0.0) - smoothing / n_vocab
    return loss, hits, jnp.where(mask[:, None], d, 0.0).astype(x.dtype)


def _projected(x, embedding, targets, mask, smoothing, block, with_grad):
    embedding = embedding.astype(x.dtype)  # the products in the compute dtype (a no-op in float32)

    def block_grads(x, d):
        dx = lax.dot_general(d, embedding, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        de = lax.dot_general(d, x, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        return dx, de

    if x.shape[0] == block:
        loss, hits, d = _block_losses(x, embedding, targets, mask, smoothing, with_grad)
        return loss, hits, (block_grads(x, d) if with_grad else None)

    def body(de, rows):
        xb, tb, mb = rows
        loss, hits, d = _block_losses(xb, embedding, tb, mb, smoothing, with_grad)
        if not with_grad:
            return de, (loss, hits, None)
        dx, de_b = block_grads(xb, d)
        return de + de_b, (loss, hits, dx)

    split = lambda a: a.reshape(-1, block, *a.shape[1:])  # noqa: E731
    de0 = jnp.zeros(embedding.shape, jnp.float32) if with_grad else None
    de, (loss, hits, dx) = lax.scan(body, de0, (split(x), split(targets), split(mask)))
    grads = (dx.reshape(x.shape[0], -1), de) if with_grad else None
    return jnp.sum(loss), jnp.sum(hits), grads


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _projected_losses(x, embedding, targets, mask, smoothing, block):
    loss, hits, _ = _projected(x, embedding, targets, mask, smoothing, block, with_grad=False)
    return loss, hits


def _projected_losses_fwd(x, embedding, targets, mask, smoothing, block):
    loss, hits, (dx, de) = _projected(x, embedding, targets, mask, smoothing, block, with_grad=True)
    return (loss, hits), (dx.astype(x.dtype), de.astype(embedding.dtype))


def _projected_losses_bwd(smoothing, block, res, g):
    dx, de = res
    return g[0].astype(dx.dtype) * dx, g[0].astype(de.dtype) * de, None, None


_projected_losses.defvjp(_projected_losses_fwd, _projected_losses_bwd)


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


def trained(freeze_encoder: bool = False):
    """The nnx filter of the parameters a run trains: all, or with ``freeze_encoder`` all but the encoder's."""
    if freeze_encoder:
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("encoder")))
    return nnx.Param


def optimizer_for(tm: nnx.Module, tc: TrainConfig, total_steps: int) -> nnx.Optimizer:
    """The run's optimizer over ``tm``'s trained parameters (:func:`trained`; a frozen encoder has no optimizer
    state): :func:`make_optimizer` with ``tc``'s settings."""
    tx = make_optimizer(max_lr=tc.max_lr, warmup_steps=tc.warmup_steps, total_steps=total_steps,
                        weight_decay=tc.weight_decay, b1=tc.b1, b2=tc.b2, eps=tc.eps, clip_norm=tc.clip_norm,
                        end_lr_ratio=tc.end_lr_ratio)
    return nnx.Optimizer(tm, tx, wrt=trained(tc.freeze_encoder))


# ==========================================================================================================
# losses and steps
# ==========================================================================================================


class CTCHead(nnx.Module):
    """Optional auxiliary head: encoder output -> character logits for a CTC loss (hybrid CTC/attention).

    Not part of Whisper: checkpoints export without it. CTC makes the encoder produce monotonic, letter-like
    features early, which the decoder's cross-attention then locks onto sooner than from the token loss alone.
    """

    def __init__(self, n_state: int, n_chars: int, *, rngs: nnx.Rngs):
        self.proj = nnx.Linear(n_state, n_chars, rngs=rngs)

    def __call__(self, xa: Array) -> Array:
        return self.proj(xa.astype(jnp.float32))


class TrainModel(nnx.Module):
    """What the optimizer trains: the Whisper model and, when the CTC loss is on, its head."""

    def __init__(self, whisper: Whisper, ctc: CTCHead | None = None):
        self.whisper = whisper
        self.ctc = ctc


def ctc_lengths(n_samples: Array, ctc_labels: Array, ctc_paddings: Array, valid: Array):
    """Encoder frames per row, label lengths, and which rows CTC can align (frames >= labels + repeats)."""
    frames = (n_samples + 2 * HOP_LENGTH - 1) // (2 * HOP_LENGTH)  # after the stride-2 conv stem
    real = ctc_paddings == 0
    label_len = jnp.sum(real, axis=-1)
    repeats = jnp.sum(real[:, 1:] & (ctc_labels[:, 1:] == ctc_labels[:, :-1]), axis=-1)
    ok = valid & (label_len > 0) & (frames >= label_len + repeats)
    return frames, label_len, ok


def _counts(batch: dict):
    n_tok = jnp.maximum(jnp.sum(batch["targets"] != IGNORE_INDEX), 1)
    _, label_len, ok = ctc_lengths(batch["n_samples"], batch["ctc_labels"], batch["ctc_paddings"], batch["valid"])
    return n_tok, jnp.maximum(jnp.sum(jnp.where(ok, label_len, 0)), 1)


def encode(tm: TrainModel, batch: dict, *, n_mels: int) -> Array:
    """Encoder output of a batch: log-mel of the padded audio on device (``batch["mel"]`` if present)."""
    mel = batch["mel"] if "mel" in batch else log_mel_spectrogram(batch["audio"], n_mels=n_mels)
    return tm.whisper.embed_audio(mel)


def batch_losses(tm: TrainModel, batch: dict, *, n_mels: int, label_smoothing: float = 0.0,
                 ctc_weight: float = 0.0, xa: Array | None = None) -> dict:
    """Summed losses of a batch: ``ce`` (tokens), ``ctc`` (characters), ``correct`` (argmax hits); ``ctc_weight``
    1.0 skips the decoder (``ce`` and ``correct`` are 0).

    The log-mel is computed here, on device inside the jitted step, from the padded audio (``batch["mel"]``,
    if present, is used as is); ``xa``, the encoder output if the caller already has it.
    """
    if xa is None:
        xa = encode(tm, batch, n_mels=n_mels)
    zero = jnp.zeros((), jnp.float32)
    out = {"ce": zero, "correct": zero, "ctc": zero}
    if ctc_weight != 1.0:  # at weight 1 (the CTC-only phase) the decoder is not run at all
        decoder = tm.whisper.decoder
        x = decoder(batch["tokens"], xa, project=False)
        embedding = decoder.token_embedding.embedding[...]
        out["ce"], _, out["correct"] = projected_cross_entropy(x, embedding, batch["targets"],
                                                               label_smoothing=label_smoothing)
    if ctc_weight:
        frames, _, ok = ctc_lengths(batch["n_samples"], batch["ctc_labels"], batch["ctc_paddings"], batch["valid"])
        logit_paddings = (jnp.arange(xa.shape[1])[None, :] >= frames[:, None]).astype(jnp.float32)
        per_row = optax.ctc_loss(tm.ctc(xa), logit_paddings, batch["ctc_labels"], batch["ctc_paddings"])
        out["ctc"] = jnp.sum(jnp.where(ok, per_row, 0.0))
    return out


def _train_step(tm: TrainModel, optimizer: nnx.Optimizer, batch: dict, *, n_mels: int, label_smoothing: float,
                ctc_weight: float, grad_accum: int, freeze_encoder: bool = False):
    n_tok, n_chr = _counts(batch)  # over the global batch, so a sharded step equals the single-device one
    rows = batch["tokens"].shape[0]
    if rows % grad_accum:
        raise ValueError(f"batch of {rows} rows does not split into {grad_accum} micro-batches")

    if freeze_encoder and ctc_weight:
        raise ValueError("a frozen encoder has no CTC loss to train: set ctc_weight to 0")

    def loss_fn(m, micro, xa):
        parts = batch_losses(m, micro, n_mels=n_mels, label_smoothing=label_smoothing, ctc_weight=ctc_weight, xa=xa)
        loss = parts["ce"] / n_tok
        if ctc_weight:  # (1 - w) * attention + w * CTC, each a per-token / per-character mean over the batch
            loss = (1.0 - ctc_weight) * loss + ctc_weight * parts["ctc"] / n_chr
        return loss, parts

    grads, totals = None, None
    for k in range(grad_accum):  # micro-batches share the batch's normalisers, so the sum is the full-batch loss
        # rows k, k + grad_accum, ...: every device's own rows split evenly, so on a mesh no row moves between
        # devices (a contiguous slice would sit on a fraction of them), and the split is the same on any mesh
        micro = {key: v.reshape(-1, grad_accum, *v.shape[1:])[:, k] for key, v in batch.items()}
        # a frozen encoder runs outside the differentiated function: its forward pass builds no backward
        xa = lax.stop_gradient(encode(tm, micro, n_mels=n_mels)) if freeze_encoder else None
        grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trained(freeze_encoder)), has_aux=True)
        (loss, parts), g = grad_fn(tm, micro, xa)
        parts = {"loss": loss, **parts}
        grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        totals = parts if totals is None else jax.tree.map(jnp.add, totals, parts)
    grad_norm = optax.global_norm(grads)
    optimizer.update(tm, grads)
    parallel.constrain(tm, optimizer)
    return {"loss": totals["loss"], "ce": totals["ce"] / n_tok, "ctc": totals["ctc"] / n_chr,
            "accuracy": totals["correct"] / n_tok, "grad_norm": grad_norm, "tokens": n_tok}


train_step = nnx.jit(_train_step, static_argnames=("n_mels", "label_smoothing", "ctc_weight", "grad_accum",
                                                   "freeze_encoder"),
                     donate_argnames=("tm", "optimizer"))
train_step.__doc__ = """One optimizer step (jitted). ``batch``: the array part of a :mod:`jax_whisper.pipeline` batch.
Under ``jax.set_mesh(mesh)`` with state and batch placed by :mod:`jax_whisper.parallel`, the step runs sharded
and the new state keeps its layout. The model's and optimizer's arrays are donated: updated in place, so the
arrays held before the call are invalid after it (copy what you want to keep, e.g. ``jax.tree.map(np.asarray,
...)``); on an accelerator that halves the memory of parameters and Adam moments.

With ``freeze_encoder`` only the decoder is trained (``optimizer`` built with
``optimizer_for`` of a run that freezes it): the encoder's output is computed without gradients.

Returns metrics: ``loss`` (the optimised objective), ``ce`` (token cross-entropy per token), ``ctc`` (per
character), ``accuracy`` (next-token argmax), ``grad_norm`` (before clipping), ``tokens``."""


@nnx.jit(static_argnames=("n_mels",))
def eval_step(tm: TrainModel, batch: dict, *, n_mels: int) -> dict:
    """Teacher-forced token loss sums of a batch (no smoothing): ``ce``, ``correct``, ``tokens``, and the encoder
    output ``xa`` (greedy decoding reuses it); with a CTC head
    also its greedy path (argmax per encoder frame) ``ctc_path`` and real frames per row ``ctc_frames``, from the
    same encoder pass."""
    xa = encode(tm, batch, n_mels=n_mels)
    parts = batch_losses(tm, batch, n_mels=n_mels, xa=xa)
    out = {"ce": parts["ce"], "correct": parts["correct"], "tokens": jnp.sum(batch["targets"] != IGNORE_INDEX),
           "xa": xa}
    if tm.ctc is not None:
        out["ctc_path"] = jnp.argmax(tm.ctc(xa), axis=-1)
        out["ctc_frames"], _, _ = ctc_lengths(batch["n_samples"], batch["ctc_labels"], batch["ctc_paddings"],
                                              batch["valid"])
    return out


def device_batch(batch: dict, mesh: jax.sharding.Mesh | None = None) -> dict:
    """The array part of a pipeline batch, as jax arrays; with ``mesh``, global arrays over it made of every
    process's rows (this process's ``batch`` holds its own, :func:`jax_whisper.parallel.global_batch`)."""
    arrays = {k: batch[k] for k in ARRAY_KEYS}
    return parallel.global_batch(mesh, arrays) if mesh is not None else {k: jnp.asarray(v) for k, v in arrays.items()}


# ==========================================================================================================
# checkpoints
# ==========================================================================================================


def _key_to_data(x):
    return jax.random.key_data(x) if jnp.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key) else x


class Checkpoints:
    """The run's orbax checkpoints: the last ``keep`` periodic ones in ``<dir>/checkpoints`` and the best by
    validation WER in ``<dir>/best``.

    A checkpoint holds ``params`` (the Whisper weights, laid out as :func:`jax_whisper.convert.save_checkpoint`'s
    Flax format, so ``scripts/convert.py`` reads it), ``extra`` (the CTC head), ``opt_state``, ``rng`` (dropout
    key and counter) and ``meta`` (JSON: step, model and train configs, data-iterator state, metrics). orbax
    writes a step into a temporary directory and renames it when complete, so a crash mid-save leaves no
    checkpoint that loads half-written.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        root = Path(directory).absolute()
        opts = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=True,  # noqa: E731
                                                      enable_async_checkpointing=False)
        self.last = ocp.CheckpointManager(root / "checkpoints", options=opts(keep))
        self.best = ocp.CheckpointManager(root / "best", options=opts(1))

    @staticmethod
    def _trees(tm: TrainModel, optimizer: nnx.Optimizer) -> dict:
        trees = {
            "params": nnx.to_pure_dict(nnx.state(tm.whisper, (nnx.Param, Buffer))),
            "opt_state": nnx.to_pure_dict(nnx.state(optimizer)),
            "rng": jax.tree.map(_key_to_data, nnx.to_pure_dict(nnx.state(tm, nnx.RngState))),
        }
        if tm.ctc is not None:
            trees["extra"] = nnx.to_pure_dict(nnx.state(tm.ctc, nnx.Param))
        return trees

    def save(self, manager, step: int, tm: TrainModel, optimizer: nnx.Optimizer, meta: dict) -> None:
        args = {k: self.ocp.args.StandardSave(v) for k, v in self._trees(tm, optimizer).items()}
        manager.save(step, args=self.ocp.args.Composite(meta=self.ocp.args.JsonSave(meta), **args), force=True)
        manager.wait_until_finished()

    def restore(self, manager, step: int, tm: TrainModel, optimizer: nnx.Optimizer) -> dict:
        """Load checkpoint ``step`` into ``tm`` and ``optimizer`` in place; returns its ``meta``."""
        trees = self._trees(tm, optimizer)
        step_dir = Path(manager.directory) / str(step)
        try:  # lost or truncated data files: one line naming the checkpoint, not orbax's concurrent failures
            for item in trees:
                check_data(step_dir, step_dir / item)
        except ValueError as e:
            raise RunDirectoryError(f"cannot restore step {step}: {e}") from None
        # restored straight into the live layout: every process reads only its own shards
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), trees)
        args = {k: self.ocp.args.StandardRestore(v) for k, v in target.items()}
        out = manager.restore(step, args=self.ocp.args.Composite(meta=self.ocp.args.JsonRestore(), **args))
        _replace_pure(nnx.state(tm.whisper, (nnx.Param, Buffer)), tm.whisper, out["params"])
        _replace_pure(nnx.state(optimizer), optimizer, out["opt_state"])
        rng_state = nnx.state(tm, nnx.RngState)
        current = nnx.to_pure_dict(rng_state)
        rng = jax.tree.map(lambda cur, saved: jax.random.wrap_key_data(saved, impl=jax.random.key_impl(cur))
                           if jnp.issubdtype(cur.dtype, jax.dtypes.prng_key) else saved, current, out["rng"])
        _replace_pure(rng_state, tm, rng)
        if tm.ctc is not None:
            _replace_pure(nnx.state(tm.ctc, nnx.Param), tm.ctc, out["extra"])
        return out["meta"]

    def close(self) -> None:
        self.last.close()
        self.best.close()


def _replace_pure(state, module, pure) -> None:
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    nnx.update(module, state)


# ==========================================================================================================
# evaluation
# ==========================================================================================================


def evaluate_plan(tm: TrainModel, cfg: WhisperConfig, tokenizer, plan: Plan, *, mesh: jax.sharding.Mesh,
                  scoring: str = "whisper", num_threads: int = 2) -> dict:
    """Validation/test metrics of ``plan``: teacher-forced loss and token accuracy, greedy-decoding WER (and
    ``wer_<group>`` for each scoring group of the items, :meth:`Plan.groups`), and with a CTC head ``ctc_wer``, the
    WER of the encoder alone (greedy CTC): which half of the model lags behind.

    Every batch is a global array over ``mesh``, built from each process's rows of ``plan`` (its ``shard_index``):
    the losses are sums over the whole batch, each process transcribes and scores its own rows, and the edit
    counts are summed over processes, so every process returns the metrics of the whole plan (``examples`` are
    this process's first rows)."""
    from jax_whisper.evaluate import transcribe_batches

    tm.eval()
    sums = {"ce": 0.0, "correct": 0.0, "tokens": 0.0}
    ctc_refs, ctc_hyps = [], []

    def features(k: int, b: dict) -> jax.Array:  # one encoder pass per batch: the losses, then greedy decoding
        m = eval_step(tm, device_batch(b, mesh), n_mels=cfg.n_mels)
        for key in sums:
            sums[key] += float(m[key])
        if "ctc_path" in m:
            path, frames = parallel.local_rows(m["ctc_path"]), parallel.local_rows(m["ctc_frames"])
            keep = np.flatnonzero(b["valid"])
            ctc_refs.extend(b["text"][r] for r in keep)
            ctc_hyps.extend(ctc_decode(path[r, : frames[r]]) for r in keep)
        return m["xa"]

    rows = transcribe_batches(tm.whisper, cfg, tokenizer, iterate_eval(plan, num_threads=num_threads),
                              to_host=parallel.local_rows, features=features)
    ce, correct, tokens = sums["ce"], sums["correct"], sums["tokens"]
    wer = _process_wer([r["reference"] for r in rows], [r["hypothesis"] for r in rows], scoring)
    tm.train()
    out = {"loss": ce / max(tokens, 1), "accuracy": correct / max(tokens, 1), "wer": wer["wer"],
           "utterances": wer["n"], "words": wer["words"], "examples": rows[:3]}
    if tm.ctc is not None:  # the same on every process: _process_wer is collective
        out["ctc_wer"] = _process_wer(ctc_refs, ctc_hyps, scoring)["wer"]
    out.update(group_wers(rows, plan.groups(), scoring, wer=_process_wer))  # e.g. held-out voices apart
    return out


def _process_wer(refs: list[str], hyps: list[str], scoring: str) -> dict:
    """Corpus WER over the rows of every process: each scores its own, the counts add up."""
    from jax_whisper.scoring import word_error_rate

    keys = ("errors", "words", "n")
    counts = dict(zip(keys, parallel.process_sum([word_error_rate(refs, hyps, scoring=scoring)[k] for k in keys]),
                      strict=True))
    return {"wer": 100.0 * counts["errors"] / max(counts["words"], 1), **{k: int(v) for k, v in counts.items()}}


# ==========================================================================================================
# the run
# ==========================================================================================================


def init_model(tc: TrainConfig, cfg: WhisperConfig, initial: Whisper | None = None) -> TrainModel:
    """The model a run starts from: fresh weights, or ``initial``'s (a loaded checkpoint, ``tc.init_from``)."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[tc.dtype]
    rngs = nnx.Rngs(params=tc.seed, dropout=tc.seed + 1)
    whisper = Whisper(cfg, dtype=dtype, rngs=rngs)
    if initial is not None:  # the same dims (dropout may differ): every weight and buffer copied over
        nnx.update(whisper, jax.tree.map(jnp.array, nnx.state(initial, (nnx.Param, Buffer))))
    ctc = CTCHead(cfg.n_audio_state, len(CTC_CHARS), rngs=rngs) if tc.ctc_weight or tc.ctc_only_steps else None
    tm = TrainModel(whisper, ctc)
    tm.train()
    return tm


class FlaxBackend:
    """The Flax side of :func:`jax_whisper.loop.fit`: model, optimizer, jitted step, orbax checkpoints, evaluation."""

    @property
    def platform(self) -> str:
        return jax.default_backend()

    initial: Whisper | None = None

    def load_initial(self, path: str) -> WhisperConfig:
        from jax_whisper.convert import load_checkpoint, resolve_model

        try:
            cfg, self.initial = load_checkpoint(resolve_model(path))
        except (OSError, ValueError) as e:  # not a checkpoint, not a Whisper, not found: named by the reader
            raise RunConfigError(f"--init-from: {e}") from None
        return cfg

    def setup(self, tc: TrainConfig, cfg: WhisperConfig, total_steps: int, out: Path) -> str:
        self.tc, self.cfg = tc, cfg
        self.mesh = parallel.make_mesh(tc.fsdp)
        n = self.mesh.size
        if tc.batch_size % (n * tc.grad_accum) or tc.eval_batch_size % n:
            raise ValueError(f"batch_size {tc.batch_size} (in {tc.grad_accum} micro-batches) and eval_batch_size "
                             f"{tc.eval_batch_size} must split evenly over the {n} devices")
        self.tm = init_model(tc, cfg, self.initial)
        self.initial = None
        parallel.shard(self.mesh, self.tm)
        self.optimizer = optimizer_for(self.tm, tc, total_steps)  # moments created like their (sharded) params
        parallel.shard(self.mesh, self.optimizer)
        self.schedule = lr_schedule(max_lr=tc.max_lr, warmup_steps=tc.warmup_steps, total_steps=total_steps,
                                    end_lr_ratio=tc.end_lr_ratio)
        self.ckpt = Checkpoints(out, keep=tc.keep_checkpoints)
        return (f"model: {tc.model_name()}, {num_params(self.tm.whisper) / 1e6:.1f}M parameters"
                + (" (encoder frozen)" if tc.freeze_encoder else "")
                + (f" + CTC head ({len(CTC_CHARS)} characters)" if self.tm.ctc is not None else "")
                + f"; Flax on {jax.devices()[0].platform} x{jax.device_count()} in {jax.process_count()} process"
                + "es" * (jax.process_count() > 1) + f", mesh data {self.mesh.shape['data']} x fsdp "
                f"{self.mesh.shape['fsdp']}")

    def latest_step(self) -> int | None:
        return self.ckpt.last.latest_step()

    def save(self, step: int, meta: dict, best: bool = False) -> None:
        self.ckpt.save(self.ckpt.best if best else self.ckpt.last, step, self.tm, self.optimizer, meta)

    def restore(self, step: int, best: bool = False) -> dict:
        return self.ckpt.restore(self.ckpt.best if best else self.ckpt.last, step, self.tm, self.optimizer)

    def step(self, batch: dict, step: int) -> dict[str, float]:
        tc = self.tc
        with jax.set_mesh(self.mesh):  # the step pins its new state to the mesh layout (parallel.constrain)
            m = train_step(self.tm, self.optimizer, device_batch(batch, self.mesh),
                           n_mels=self.cfg.n_mels, label_smoothing=tc.label_smoothing,
                           ctc_weight=tc.ctc_weight_at(step), grad_accum=tc.grad_accum,
                           freeze_encoder=tc.freeze_encoder)
        return {k: float(v) for k, v in m.items()}  # replicated scalars: every process reads its own copy

    def lr(self, step: int) -> float:
        return float(self.schedule(step))

    def evaluate(self, plan: Plan, tokenizer, scoring: str) -> dict:
        return evaluate_plan(self.tm, self.cfg, tokenizer, plan, mesh=self.mesh, scoring=scoring)

    def close(self) -> None:
        self.ckpt.close()


def train(tc: TrainConfig, *, log: Callable[[str], None] = print, stop_after: int | None = None) -> dict:
    """Train as ``tc`` says with :func:`jax_whisper.loop.fit` (see there); returns the results dict.

    With ``tc.coordinator`` / ``tc.distributed`` this process first joins the multi-process run; each process then
    loads its own rows of every batch and the step runs over the mesh of all processes' devices."""
    parallel.initialize_distributed(tc.coordinator, tc.num_processes, tc.process_id, auto=tc.distributed)
    return fit(tc, FlaxBackend(), log=log, stop_after=stop_after, shard_index=jax.process_index(),
               shard_count=jax.process_count())
