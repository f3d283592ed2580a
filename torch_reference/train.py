"""Training pieces for the PyTorch reference: the token loss and the optimizer (the seed recipe's AdamW).

Mirrors ``jax_whisper/train.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
