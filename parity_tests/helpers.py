"""Shared helpers for the parity suite: error checks that record the largest error per bound, random models and
inputs. Every test takes its own seed (fixture ``seed`` in conftest.py) that appears in every assertion message."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from jax_whisper.config import WhisperConfig

observed: dict[str, dict[str, float]] = defaultdict(
    lambda: {"max_abs": 0.0, "rel_l2": 0.0, "bound_max_abs": 0.0, "bound_rel_l2": 0.0, "n": 0}
)


def to_np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def check_close(actual, expected, *, what: str, seed: int, rel_l2: float | None = None,
                max_abs: float | None = None) -> tuple[float, float]:
    """Assert relative L2 error ``|a - e| / |e|`` and max-abs error within bounds; record both."""
    a, e = to_np(actual), to_np(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape} (seed {seed})"
    assert np.isfinite(a).all() and np.isfinite(e).all(), f"{what}: non-finite values (seed {seed})"
    err_abs = float(np.abs(a - e).max()) if a.size else 0.0
    denom = float(np.linalg.norm(e))
    err_rel = float(np.linalg.norm(a - e)) / denom if denom else float(np.linalg.norm(a - e))
    rec = observed[what]
    rec["max_abs"] = max(rec["max_abs"], err_abs)
    rec["rel_l2"] = max(rec["rel_l2"], err_rel)
    rec["bound_max_abs"] = max_abs or 0.0
    rec["bound_rel_l2"] = rel_l2 or 0.0
    rec["n"] += 1
    if rel_l2 is not None:
        assert err_rel <= rel_l2, f"{what}: relative L2 {err_rel:.3g} > {rel_l2:g} (seed {seed})"
    if max_abs is not None:
        assert err_abs <= max_abs, f"{what}: max-abs {err_abs:.3g} > {max_abs:g} (seed {seed})"
    return err_rel, err_abs


def random_torch_model(cfg: WhisperConfig, seed: int):
    """The torch reference with fresh weights; biases and LayerNorm affine terms perturbed away from their
    initial zeros/ones so a mis-mapped bias or LayerNorm would show."""
    from torch_reference.model import Whisper as TorchWhisper

    torch.manual_seed(seed)
    model = TorchWhisper(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.02)
            elif "ln" in name.split(".")[-2]:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def random_inputs(cfg: WhisperConfig, seed: int, *, batch: int = 2, n_frames: int | None = None,
                  n_tokens: int | None = None):
    """Log-mel-like input in Whisper's range ([-1, 1.5]) and random token ids."""
    rng = np.random.default_rng(seed)
    n_frames = n_frames or cfg.n_frames
    n_tokens = n_tokens or min(cfg.n_text_ctx, 24)
    mel = np.clip(rng.normal(0.2, 0.4, (batch, cfg.n_mels, n_frames)), -1.0, 1.5).astype(np.float32)
    tokens = rng.integers(0, cfg.n_vocab, (batch, n_tokens)).astype(np.int64)
    return mel, tokens
