"""Training Whisper in PyTorch, the reference for ``jax_whisper/train.py``: the same losses (token cross-entropy,
optional auxiliary CTC), optimizer (AdamW after global-norm clipping, warmup + cosine), step, checkpoints and
training loop, over the same input pipeline (:mod:`jax_whisper.pipeline`), so the two trainers can be compared
step for step. Names and order mirror the Flax module. Never imports jax.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jax_whisper.config import RunConfigError, TrainConfig, WhisperConfig
from jax_whisper.loop import fit
from jax_whisper.pipeline import ARRAY_KEYS, Plan, iterate_eval
from jax_whisper.tokenizer import CTC_BLANK, CTC_CHARS, ctc_decode
from torch_reference.audio import HOP_LENGTH, log_mel_spectrogram
from torch_reference.model import Whisper

CONFIG_KEY = "jax_whisper_config"  # the WhisperConfig in safetensors metadata (jax_whisper.formats.native)
IGNORE_INDEX = -100  # target id excluded from the loss (padding)


def cross_entropy(logits: Tensor, targets: Tensor, *, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """Token cross-entropy: ``(sum of losses, number of counted tokens)``; targets == IGNORE_INDEX are skipped."""
    loss = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX,
                           label_smoothing=label_smoothing, reduction="sum")
    return loss, (targets != IGNORE_INDEX).sum()


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, end_lr_ratio: float = 0.0) -> float:
    """Multiplier of max_lr: linear warmup from 0, then cosine decay to ``end_lr_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return step / warmup_steps
    decay_steps = max(total_steps, warmup_steps + 1) - warmup_steps
    progress = min(step - warmup_steps, decay_steps) / decay_steps
    return end_lr_ratio + (1.0 - end_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, *, max_lr: float, warmup_steps: int, total_steps: int,
                   weight_decay: float = 0.01, b1: float = 0.9, b2: float = 0.98, eps: float = 1e-6,
                   end_lr_ratio: float = 0.0) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with weight decay on matrices and embeddings only, and its warmup + cosine scheduler.

    Gradient clipping is done by the train step (``torch.nn.utils.clip_grad_norm_``) before ``optimizer.step()``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=max_lr, betas=(b1, b2), eps=eps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup_steps=warmup_steps, total_steps=total_steps, end_lr_ratio=end_lr_ratio))
    return opt, sched


def optimizer_for(tm: nn.Module, tc: TrainConfig, total_steps: int):
    """The run's optimizer and scheduler over ``tm``: :func:`make_optimizer` with ``tc``'s settings (its
    ``clip_norm`` is the train step's)."""
    return make_optimizer(tm, max_lr=tc.max_lr, warmup_steps=tc.warmup_steps, total_steps=total_steps,
                          weight_decay=tc.weight_decay, b1=tc.b1, b2=tc.b2, eps=tc.eps, end_lr_ratio=tc.end_lr_ratio)


# ==========================================================================================================
# losses and steps
# ==========================================================================================================


class CTCHead(nn.Module):
    """Optional auxiliary head: encoder output -> character logits for a CTC loss (hybrid CTC/attention).

    Not part of Whisper: checkpoints export without it. Initialised as flax's ``nnx.Linear`` (LeCun truncated
    normal kernel, zero bias), applied to the float32 encoder output.
    """

    def __init__(self, n_state: int, n_chars: int):
        super().__init__()
        self.proj = nn.Linear(n_state, n_chars)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = 1.0 / math.sqrt(self.proj.in_features) / 0.87962566  # corrects the std of N cut at ±2σ
        nn.init.trunc_normal_(self.proj.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.proj.bias)

    def forward(self, xa: Tensor) -> Tensor:
        return self.proj(xa.float())


class TrainModel(nn.Module):
    """What the optimizer trains: the Whisper model and, when the CTC loss is on, its head."""

    def __init__(self, whisper: Whisper, ctc: CTCHead | None = None):
        super().__init__()
        self.whisper = whisper
        self.ctc = ctc


def ctc_lengths(n_samples: Tensor, ctc_labels: Tensor, ctc_paddings: Tensor, valid: Tensor):
    """Encoder frames per row, label lengths, and which rows CTC can align (frames >= labels + repeats)."""
    frames = (n_samples + 2 * HOP_LENGTH - 1) // (2 * HOP_LENGTH)  # after the stride-2 conv stem
    real = ctc_paddings == 0
    label_len = real.sum(dim=-1)
    repeats = (real[:, 1:] & (ctc_labels[:, 1:] == ctc_labels[:, :-1])).sum(dim=-1)
    ok = valid.bool() & (label_len > 0) & (frames >= label_len + repeats)
    return frames, label_len, ok


def ctc_per_row(logits: Tensor, frames: Tensor, labels: Tensor, label_len: Tensor) -> Tensor:
    """CTC negative log-likelihood of every row (blank 0), as ``optax.ctc_loss`` computes it.

    ``logits`` (B, T, C); only a row's first ``frames`` frames count (optax: ``logit_paddings``) and its first
    ``label_len`` labels (optax: ``label_paddings``). Rows must be alignable, else the loss is inf.
    """
    logp = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T, B, C)
    return F.ctc_loss(logp, labels.long(), frames.long(), label_len.long(), blank=CTC_BLANK, reduction="none")


def _counts(batch: dict) -> tuple[Tensor, Tensor]:
    n_tok = (batch["targets"] != IGNORE_INDEX).sum().clamp(min=1)
    _, label_len, ok = ctc_lengths(batch["n_samples"], batch["ctc_labels"], batch["ctc_paddings"], batch["valid"])
    return n_tok, torch.where(ok, label_len, 0).sum().clamp(min=1)


def batch_losses(tm: TrainModel, batch: dict, *, n_mels: int, label_smoothing: float = 0.0,
                 ctc_weight: float = 0.0) -> dict:
    """Summed losses of a batch: ``ce`` (tokens), ``ctc`` (characters), ``correct`` (argmax hits); ``ctc_weight``
    1.0 skips the decoder (``ce`` and ``correct`` are 0).

    The log-mel is computed from the padded audio (``batch["mel"]``, if present, is used as is). CTC counts the
    rows :func:`ctc_lengths` finds alignable; the others are left out of the loss (never computed, so an
    unalignable row's infinite loss cannot reach the gradients).
    """
    mel = batch["mel"] if "mel" in batch else log_mel_spectrogram(batch["audio"], n_mels=n_mels)
    xa = tm.whisper.embed_audio(mel)
    zero = torch.zeros((), dtype=torch.float32, device=xa.device)
    out = {"ce": zero, "correct": zero, "ctc": zero}
    if ctc_weight != 1.0:  # at weight 1 (the CTC-only phase) the decoder is not run at all
        logits = tm.whisper.logits(batch["tokens"], xa)
        targets = batch["targets"]
        out["ce"], _ = cross_entropy(logits, targets, label_smoothing=label_smoothing)
        out["correct"] = ((logits.argmax(dim=-1) == targets) & (targets != IGNORE_INDEX)).sum()
    if ctc_weight:
        frames, label_len, ok = ctc_lengths(batch["n_samples"], batch["ctc_labels"], batch["ctc_paddings"],
                                            batch["valid"])
        rows = ok.nonzero().squeeze(1)
        if rows.numel():
            out["ctc"] = ctc_per_row(tm.ctc(xa[rows]), frames[rows], batch["ctc_labels"][rows],
                                     label_len[rows]).sum()
    return out


def train_step(tm: TrainModel, optimizer: torch.optim.Optimizer, scheduler, batch: dict, *, n_mels: int,
               label_smoothing: float = 0.0, ctc_weight: float = 0.0, grad_accum: int = 1,
               clip_norm: float | None = 1.0) -> dict[str, float]:
    """One optimizer step, the Flax objective: ``ce / n_tok``, or with CTC
    ``(1 - w) * ce / n_tok + w * ctc / n_chr``, normalised by the whole batch's token and character counts.

    ``grad_accum`` micro-batches accumulate their share of the gradient (same normalisers, so the sum is the
    full-batch gradient). Then global-norm clipping, the AdamW step and the scheduler step; a non-finite
    loss or gradient norm skips both (the caller stops). Returns floats: ``loss``, ``ce`` (per token), ``ctc``
    (per character), ``accuracy``, ``grad_norm`` (before clipping), ``tokens``.
    """
    n_tok, n_chr = _counts(batch)
    rows = batch["tokens"].shape[0]
    if rows % grad_accum:
        raise ValueError(f"batch of {rows} rows does not split into {grad_accum} micro-batches")
    optimizer.zero_grad(set_to_none=True)
    totals = {"loss": 0.0, "ce": 0.0, "ctc": 0.0, "correct": 0.0}
    for k in range(grad_accum):
        micro = {key: v[k::grad_accum] for key, v in batch.items() if torch.is_tensor(v)}  # as the Flax step
        parts = batch_losses(tm, micro, n_mels=n_mels, label_smoothing=label_smoothing, ctc_weight=ctc_weight)
        loss = parts["ce"] / n_tok
        if ctc_weight:  # (1 - w) * attention + w * CTC, each a per-token / per-character mean over the batch
            loss = (1.0 - ctc_weight) * loss + ctc_weight * parts["ctc"] / n_chr
        loss.backward()
        for key, v in (("loss", loss), *parts.items()):
            totals[key] += float(v.detach())
    params = [p for p in tm.parameters() if p.requires_grad]
    for p in params:  # a parameter the loss did not reach has a zero gradient (optax still decays it), not None
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if clip_norm is None:
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
    grad_norm = float(grad_norm)
    if math.isfinite(grad_norm) and math.isfinite(totals["loss"]):
        optimizer.step()
        scheduler.step()
    n_tok, n_chr = float(n_tok), float(n_chr)
    return {"loss": totals["loss"], "ce": totals["ce"] / n_tok, "ctc": totals["ctc"] / n_chr,
            "accuracy": totals["correct"] / n_tok, "grad_norm": grad_norm, "tokens": n_tok}


_LONG_KEYS = ("n_samples", "tokens", "targets", "ctc_labels")


def torch_batch(batch: dict, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """The array part of a pipeline batch as torch tensors (ids and lengths int64)."""
    out = {}
    for k in ARRAY_KEYS:
        x = torch.tensor(np.asarray(batch[k]))
        out[k] = (x.long() if k in _LONG_KEYS else x).to(device)
    return out


# ==========================================================================================================
# checkpoints
# ==========================================================================================================

MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"


class Checkpoints:
    """The run's checkpoints: the last ``keep`` periodic ones in ``<dir>/checkpoints/<step>/`` and the best by
    validation WER in ``<dir>/best/``.

    A checkpoint directory holds ``model.safetensors`` (the Whisper weights with openai names, the config as
    JSON in the metadata under ``"jax_whisper_config"``: the "torch" format ``jax_whisper.convert`` reads) and
    ``trainer.pt`` (optimizer, scheduler, CTC head, RNG state, data-iterator state, history, step). Each
    directory is written into a temporary sibling and renamed into place, so a crash mid-save never leaves a
    half-written checkpoint.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3):
        root = Path(directory).absolute()
        self.last_dir, self.best_dir, self.keep = root / "checkpoints", root / "best", keep

    def steps(self) -> list[int]:
        if not self.last_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.last_dir.iterdir()
                      if p.name.isdigit() and (p / MODEL_FILE).is_file() and (p / TRAINER_FILE).is_file())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, tm: TrainModel, optimizer, scheduler, meta: dict, *, best: bool = False) -> Path:
        dst = self.best_dir if best else self.last_dir / str(step)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
        try:
            save_safetensors(tm.whisper, tmp / MODEL_FILE)
            trainer = {**meta, "step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "ctc": None if tm.ctc is None else tm.ctc.state_dict(), "torch_rng": torch.get_rng_state()}
            torch.save(trainer, tmp / TRAINER_FILE)
            for mode, f in ((0o644, tmp / MODEL_FILE), (0o644, tmp / TRAINER_FILE), (0o755, tmp)):
                os.chmod(f, mode)  # mkdtemp (and safetensors' writer) create owner-only files
            _replace_dir(tmp, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not best and self.keep > 0:
            for old in self.steps()[: -self.keep]:
                shutil.rmtree(self.last_dir / str(old), ignore_errors=True)
        return dst

    def restore(self, path: Path, tm: TrainModel, optimizer=None, scheduler=None) -> dict:
        """Load the checkpoint in directory ``path`` into ``tm`` (and the optimizer, scheduler and torch RNG when
        given) in place; returns the trainer state (step, data_state, history, ...)."""
        from safetensors.torch import load_file

        tm.whisper.load_state_dict(load_file(str(path / MODEL_FILE)), strict=True)
        trainer = torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=True)
        if tm.ctc is not None:
            tm.ctc.load_state_dict(trainer["ctc"])
        if optimizer is not None:
            optimizer.load_state_dict(trainer["optimizer"])
            scheduler.load_state_dict(trainer["scheduler"])
            torch.set_rng_state(trainer["torch_rng"])
        return trainer


def save_safetensors(whisper: Whisper, path: str | os.PathLike) -> None:
    """The Whisper weights (openai names, float32) with the config in the metadata: ``jax_whisper.convert``'s
    "torch" checkpoint format (``load_checkpoint`` reads it)."""
    from safetensors.torch import save_file

    state = {k: v.detach().float().cpu().contiguous() for k, v in whisper.state_dict().items()}
    save_file(state, str(path), metadata={CONFIG_KEY: whisper.cfg.to_json()})


def _replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, an existing ``dst`` renamed aside first and removed afterwards."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


# ==========================================================================================================
# evaluation
# ==========================================================================================================


@torch.no_grad()
def evaluate_plan(tm: TrainModel, cfg: WhisperConfig, tokenizer, plan: Plan, *, scoring: str = "whisper",
                  num_threads: int = 2) -> dict:
    """Validation/test metrics of ``plan``: teacher-forced loss and token accuracy, greedy-decoding WER, and with
    a CTC head ``ctc_wer``, the WER of the encoder alone (greedy CTC).

    The encoder runs once per batch for all three: they read the same audio features.
    """
    from jax_whisper.scoring import group_wers, word_error_rate
    from torch_reference.decoding import decode_texts, greedy_decode_features

    was_training = tm.training
    tm.eval()
    prompt = tokenizer.sot_sequence_including_notimestamps
    eot = tokenizer.eot
    suppress = tuple(range(eot + 1, cfg.n_vocab))  # specials and timestamps all follow eot
    max_tokens = cfg.n_text_ctx - len(prompt) + 1
    device = tm.whisper.device
    ce = correct = tokens = 0.0
    rows, ctc_refs, ctc_hyps = [], [], []
    for b in iterate_eval(plan, num_threads=num_threads):
        tb = torch_batch(b, device)
        mel = log_mel_spectrogram(tb["audio"], n_mels=cfg.n_mels)
        mel = mel[..., : mel.shape[-1] - mel.shape[-1] % 2]
        xa = tm.whisper.embed_audio(mel)
        logits = tm.whisper.logits(tb["tokens"], xa)
        part, count = cross_entropy(logits, tb["targets"])
        hits = ((logits.argmax(dim=-1) == tb["targets"]) & (tb["targets"] != IGNORE_INDEX)).sum()
        ce, correct, tokens = ce + float(part), correct + float(hits), tokens + float(count)
        out = greedy_decode_features(tm.whisper, xa, prompt, eot=eot, max_tokens=max_tokens, suppress=suppress)
        hyps = decode_texts(tokenizer, out)
        valid = np.asarray(b["valid"], bool)
        rows += [{"id": b["id"][r], "reference": b["text"][r], "hypothesis": hyps[r]}
                 for r in range(len(hyps)) if valid[r]]
        if tm.ctc is not None:
            frames, _, _ = ctc_lengths(tb["n_samples"], tb["ctc_labels"], tb["ctc_paddings"], tb["valid"])
            path = tm.ctc(xa).argmax(dim=-1).cpu().numpy()
            keep = np.flatnonzero(valid)
            ctc_refs += [b["text"][r] for r in keep]
            ctc_hyps += [ctc_decode(path[r, : int(frames[r])]) for r in keep]
    wer = word_error_rate([r["reference"] for r in rows], [r["hypothesis"] for r in rows], scoring=scoring)
    tm.train(was_training)
    out = {"loss": ce / max(tokens, 1), "accuracy": correct / max(tokens, 1), "wer": wer["wer"],
           "utterances": wer["n"], "words": wer["words"], "examples": rows[:3]}
    if ctc_refs:
        out["ctc_wer"] = word_error_rate(ctc_refs, ctc_hyps, scoring=scoring)["wer"]
    out.update(group_wers(rows, plan.groups(), scoring))
    return out


# ==========================================================================================================
# the run
# ==========================================================================================================


def init_model(tc: TrainConfig, cfg: WhisperConfig, initial: dict[str, np.ndarray] | None = None) -> TrainModel:
    """Fresh weights from ``torch.manual_seed(tc.seed)``, or ``initial``'s (openai-named arrays of the checkpoint
    ``tc.init_from``; fp16 widens exactly), in training mode; with ``tc.freeze_encoder`` the encoder's parameters
    take no gradient (so its forward builds no backward, and the optimizer leaves it out)."""
    if tc.dtype != "float32":
        raise ValueError(f"the PyTorch reference trains in float32 only, got dtype={tc.dtype!r}")
    torch.manual_seed(tc.seed)
    whisper = Whisper(cfg)
    if initial is not None:
        whisper.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in initial.items()}, strict=True)
    whisper.encoder.requires_grad_(not tc.freeze_encoder)
    ctc = CTCHead(cfg.n_audio_state, len(CTC_CHARS)) if tc.ctc_weight or tc.ctc_only_steps else None
    tm = TrainModel(whisper, ctc)
    tm.train()
    return tm


def num_params(model: nn.Module) -> int:
    """Trainable parameters (the fixed encoder positions, a buffer, excluded)."""
    return sum(p.numel() for p in model.parameters())


class TorchBackend:
    """The PyTorch side of :func:`jax_whisper.loop.fit`: model, optimizer, step, checkpoints, evaluation."""

    platform = "cpu"  # init_model builds on the CPU

    initial: dict[str, np.ndarray] | None = None

    def load_initial(self, path: str) -> WhisperConfig:
        from jax_whisper.formats.reading import detect_format, load_state, resolve_model  # no jax in these

        try:
            p = resolve_model(path)
            fmt = detect_format(p)
            if fmt not in ("flax", "flax-train"):
                cfg, self.initial = load_state(p, fmt)
                return cfg
        except (OSError, ValueError) as e:  # not a checkpoint, not a Whisper, not found: named by the reader
            raise RunConfigError(f"--init-from: {e}") from None
        raise RunConfigError(f"--init-from {path}: a Flax (orbax) checkpoint, which the PyTorch trainer cannot "
                             f"read without jax; convert it first: scripts/convert.py {path} model.safetensors "
                             f"--to torch")

    def setup(self, tc: TrainConfig, cfg: WhisperConfig, total_steps: int, out: Path) -> str:
        if tc.fsdp != 1 or tc.distributed or tc.coordinator:
            raise ValueError("the PyTorch reference trains in one process on one device: --fsdp, --distributed and "
                             "--coordinator are for the Flax trainer")
        self.tc, self.cfg, self.total_steps = tc, cfg, total_steps
        self.tm = init_model(tc, cfg, self.initial)
        self.initial = None
        self.optimizer, self.scheduler = optimizer_for(self.tm, tc, total_steps)
        self.ckpt = Checkpoints(out, keep=tc.keep_checkpoints)
        return (f"model: {tc.model_name()}, {num_params(self.tm.whisper) / 1e6:.1f}M parameters"
                + (" (encoder frozen)" if tc.freeze_encoder else "")
                + (f" + CTC head ({len(CTC_CHARS)} characters)" if self.tm.ctc is not None else "")
                + f"; PyTorch on {self.tm.whisper.device}, {torch.get_num_threads()} threads")

    def latest_step(self) -> int | None:
        return self.ckpt.latest_step()

    def save(self, step: int, meta: dict, best: bool = False) -> None:
        self.ckpt.save(step, self.tm, self.optimizer, self.scheduler, meta, best=best)

    def restore(self, step: int, best: bool = False) -> dict:
        if best:  # weights only: the best checkpoint is read for testing, training does not continue from it
            return self.ckpt.restore(self.ckpt.best_dir, self.tm)
        return self.ckpt.restore(self.ckpt.last_dir / str(step), self.tm, self.optimizer, self.scheduler)

    def step(self, batch: dict, step: int) -> dict[str, float]:
        tc = self.tc
        self.tm.train()
        return train_step(self.tm, self.optimizer, self.scheduler, torch_batch(batch, self.tm.whisper.device),
                          n_mels=self.cfg.n_mels, label_smoothing=tc.label_smoothing,
                          ctc_weight=tc.ctc_weight_at(step),
                          grad_accum=tc.grad_accum, clip_norm=tc.clip_norm)

    def lr(self, step: int) -> float:
        tc = self.tc
        return tc.max_lr * lr_factor(step, warmup_steps=tc.warmup_steps, total_steps=self.total_steps,
                                     end_lr_ratio=tc.end_lr_ratio)

    def evaluate(self, plan: Plan, tokenizer, scoring: str) -> dict:
        return evaluate_plan(self.tm, self.cfg, tokenizer, plan, scoring=scoring)

    def close(self) -> None:
        pass


def train(tc: TrainConfig, *, log: Callable[[str], None] = print, stop_after: int | None = None) -> dict:
    """Train as ``tc`` says with :func:`jax_whisper.loop.fit`, the loop the Flax trainer runs; returns the results."""
    return fit(tc, TorchBackend(), log=log, stop_after=stop_after)
