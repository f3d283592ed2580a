"""Reading checkpoints into openai-named numpy arrays, without jax: format detection, the readers of the
``torch``, ``openai``, ``hf`` and ``ctranslate2`` formats (:func:`load_state`), model names from local caches.
The PyTorch reference trainer (which never imports jax) starts from checkpoints through this module;
:mod:`jax_whisper.convert` re-exports it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jax_whisper.config import WhisperConfig

_CONFIG_KEY = "jax_whisper_config"  # safetensors metadata key holding the WhisperConfig as JSON
_HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")


def _as_numpy(name: str, t: Any) -> np.ndarray:
    if hasattr(t, "detach"):  # torch.Tensor without importing torch
        t = t.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()  # numpy has no bfloat16; widening is exact
        t = t.numpy()
    try:
        return np.asarray(t)
    except Exception as e:  # noqa: BLE001
        raise TypeError(f"tensor {name!r}: cannot convert {type(t).__name__} to an array") from e


def _config_from(source: Path, dims: Mapping[str, Any]) -> WhisperConfig:
    try:
        return WhisperConfig.from_dict(dims)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {str(source)!r}: dimensions {dict(dims)} do not make a WhisperConfig: {e}"
                         ) from e


_TORCH_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's (zip) container
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # pre-1.6 torch.save: a pickled magic number


def detect_format(path: str | os.PathLike) -> str:
    """Which checkpoint format ``path`` holds; ValueError naming the path when none fits.

    One of ``flax``, ``flax-train``, ``torch``, ``openai``, ``hf``, ``ctranslate2``. ``flax-train`` is a training
    checkpoint of ``jax_whisper.train`` (one step directory, or a run's output directory, which resolves to its
    best checkpoint, else its latest).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    if p.is_dir():
        if (p / "config.json").is_file() and (p / "state").is_dir():
            return "flax"
        if (p / "params").is_dir() and (p / "meta").is_dir():
            return "flax-train"
        if (p / "best").is_dir() or (p / "checkpoints").is_dir():
            return "flax-train"
        if (p / "model.bin").is_file():
            return "ctranslate2"
        if any((p / f).is_file() for f in _HF_WEIGHT_FILES):
            return "hf"
        if (p / "config.json").is_file():
            raise ValueError(f"checkpoint {str(p)!r}: has config.json but no weights (expected one of "
                             f"{', '.join(_HF_WEIGHT_FILES)} for Hugging Face, or model.bin for CTranslate2)")
    elif p.suffix == ".safetensors":
        return "torch"
    elif p.name == "model.bin" and not _file_starts_with(p, _TORCH_ZIP_MAGIC):  # CTranslate2's, given directly
        return "ctranslate2"
    elif p.suffix in (".pt", ".pth") or _file_starts_with(p, _TORCH_ZIP_MAGIC, _TORCH_LEGACY_MAGIC):
        return "openai"
    raise ValueError(
        f"checkpoint {str(p)!r}: not a recognised format (expected a Flax checkpoint directory with config.json "
        f"and state/, a training run or checkpoint directory, a .safetensors file written by this project, an "
        f"OpenAI Whisper .pt, a Hugging Face Whisper directory or a CTranslate2 directory with model.bin)"
    )


def _file_starts_with(path: Path, *prefixes: bytes) -> bool:
    with open(path, "rb") as f:
        head = f.read(max(map(len, prefixes)))
    return any(head.startswith(p) for p in prefixes)


def load_state(path: str | os.PathLike, fmt: str | None = None) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    """A ``torch``/``openai``/``hf``/``ctranslate2`` checkpoint as ``(cfg, openai-named numpy arrays)``.

    Float arrays may keep a reduced stored precision (an OpenAI or HF fp16 checkpoint stays fp16; bf16 and
    CTranslate2's quantised weights become float32); ``torch_to_flax`` and
    ``TorchWhisper(cfg).load_state_dict({k: torch.from_numpy(v) ...})`` both widen them exactly.
    """
    fmt = fmt or detect_format(path)
    from jax_whisper.formats.ctranslate2 import load_ct2_state
    from jax_whisper.formats.huggingface import load_hf_state
    from jax_whisper.formats.openai import load_openai_state

    readers = {"torch": load_torch_state, "openai": load_openai_state, "hf": load_hf_state,
               "ctranslate2": load_ct2_state}
    if fmt not in readers:
        raise ValueError(f"checkpoint {str(path)!r} is a {fmt} checkpoint (Flax state): use load_checkpoint")
    with _reading(path, fmt):
        return readers[fmt](path)


@contextlib.contextmanager
def _reading(path: str | os.PathLike, fmt: str):
    """Whatever a reader raises on a truncated or corrupt checkpoint (safetensors' SafetensorError, orbax's and
    TensorStore's errors over missing data files, pickle's, JSON's, a bad config) becomes one ValueError naming
    the checkpoint and its format; a message that already names the path is kept as it is."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - translated, not swallowed
        message = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, OSError | ValueError) and str(path) in message:
            raise
        if len(message) > 300:  # orbax appends the whole TensorStore spec
            message = message[:300] + " ..."
        raise ValueError(f"checkpoint {str(path)!r} ({fmt}) cannot be read, truncated or corrupt? "
                         f"{type(e).__name__}: {message}") from e


def load_torch_state(path: str | os.PathLike) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    """Read a ``torch``-format checkpoint (safetensors, config in the metadata) as numpy arrays."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        if _CONFIG_KEY not in meta:
            raise ValueError(f"checkpoint {str(path)!r}: safetensors metadata has no {_CONFIG_KEY!r} entry (not "
                             f"written by this project; for a Hugging Face model pass its directory)")
        cfg = WhisperConfig.from_json(meta[_CONFIG_KEY])
        return cfg, {k: f.get_tensor(k) for k in f.keys()}


# ---------------------------------------------------------------------------------------------------------------
# model names from local caches


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint path, or a model name found in a local cache; never downloads.

    A name (``tiny.en``, ``large-v3``, or a Hugging Face repo id ``org/name``) is looked up as openai-whisper's
    ``$XDG_CACHE_HOME/whisper/NAME.pt`` (default ``~/.cache/whisper``), then in the Hugging Face hub cache as
    ``openai/whisper-NAME`` and ``Systran/faster-whisper-NAME`` (or the repo id). FileNotFoundError otherwise.
    """
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    name = str(name_or_path)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    candidates = [cache / "whisper" / f"{name}.pt"]
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", cache / "huggingface")) / "hub")
    repos = [name] if "/" in name else [f"openai/whisper-{name}", f"Systran/faster-whisper-{name}"]
    for repo in repos:
        snapshots = hub / f"models--{repo.replace('/', '--')}" / "snapshots"
        ref = hub / f"models--{repo.replace('/', '--')}" / "refs" / "main"
        if ref.is_file():
            candidates.append(snapshots / ref.read_text().strip())
        candidates += sorted(snapshots.glob("*"), key=lambda s: s.stat().st_mtime, reverse=True)
    for c in candidates:
        if c.is_file() or (c.is_dir() and ((c / "model.bin").is_file()
                                           or any((c / f).is_file() for f in _HF_WEIGHT_FILES))):
            return c
    looked = ", ".join(str(c) for c in candidates[:3])
    raise FileNotFoundError(f"model {name!r}: no such path, and not in a local cache (looked for {looked}); "
                            f"nothing is downloaded: pass a checkpoint path")


__all__ = ["detect_format", "load_state", "load_torch_state", "resolve_model"]
