"""openai-whisper's ``.pt`` checkpoints (``{"dims": ..., "model_state_dict": ...}``, usually fp16): the reader (the
writer is one ``torch.save`` in :func:`jax_whisper.convert.save_checkpoint`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from jax_whisper.config import WhisperConfig
from jax_whisper.formats.reading import _as_numpy, _config_from


def load_openai_state(path: str | os.PathLike) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    """An openai-whisper checkpoint: ``{"dims": ModelDimensions as a dict, "model_state_dict": ...}``."""
    import torch

    path = Path(path)
    try:
        # weights_only: a checkpoint is data; never run code from a pickle
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch raises many kinds for a bad file)
        raise ValueError(f"checkpoint {str(path)!r}: not a readable torch file ({type(e).__name__}: {e})") from e
    if not (isinstance(ckpt, Mapping) and "dims" in ckpt and "model_state_dict" in ckpt):
        if isinstance(ckpt, Mapping):
            keys = sorted(map(str, ckpt))
            found = f"keys {keys[:4]}" + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        else:
            found = f"a {type(ckpt).__name__}"
        raise ValueError(f"checkpoint {str(path)!r}: not an OpenAI Whisper checkpoint: expected a dict with 'dims' "
                         f"and 'model_state_dict', found {found} (a Hugging Face pytorch_model.bin? pass its "
                         f"directory)")
    cfg = _config_from(path, dict(ckpt["dims"]))
    return cfg, {k: _as_numpy(k, v) for k, v in ckpt["model_state_dict"].items()}
