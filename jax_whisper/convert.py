"""Weights between frameworks and checkpoint formats.

Flax parameter paths map one-to-one onto openai-whisper's state-dict names::

    ('encoder', 'blocks', 0, 'attn', 'query', 'kernel')  <->  encoder.blocks.0.attn.query.weight   (transposed)
    ('decoder', 'blocks', 3, 'mlp', 'layers', 2, 'bias') <->  decoder.blocks.3.mlp.2.bias
    ('encoder', 'conv1', 'kernel') (k, in, out)          <->  encoder.conv1.weight (out, in, k)

Formats this project writes: ``flax`` (an orbax directory: ``config.json`` + ``state/``) and ``torch`` (one
``.safetensors`` file, openai names, the config in its metadata). Every write is atomic: a temporary sibling
is renamed into place, so an interrupted save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_whisper.config import WhisperConfig
from jax_whisper.model import Buffer, Whisper

if TYPE_CHECKING:
    import torch

FORMATS = ("flax", "torch")
_CONFIG_KEY = "jax_whisper_config"  # safetensors metadata key holding the WhisperConfig as JSON


# ---------------------------------------------------------------------------------------------------------------
# names


def torch_name(path: Iterable[Any]) -> str:
    """Flax parameter path -> openai-whisper state-dict key."""
    parts = [str(p) for p in path if p != "layers"]  # nnx.Sequential keeps its children under `layers`
    leaf = parts[-1]
    parts[-1] = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
    return ".".join(parts)


def _to_torch_layout(path: tuple, x: np.ndarray) -> np.ndarray:
    if path[-1] != "kernel":
        return x
    return x.T if x.ndim == 2 else x.transpose(2, 1, 0)  # Linear (in,out)->(out,in); Conv (k,in,out)->(out,in,k)


def _from_torch_layout(path: tuple, x: np.ndarray) -> np.ndarray:
    return _to_torch_layout(path, x)  # both transposes are their own inverse


# ---------------------------------------------------------------------------------------------------------------
# torch state dict <-> Flax model


def _weight_paths(model_or_abstract: Whisper) -> dict[str, tuple[tuple, Any]]:
    """openai name -> (flax path, variable) for every parameter and buffer."""
    flat = nnx.to_flat_state(nnx.state(model_or_abstract, (nnx.Param, Buffer)))
    return {torch_name(path): (path, var) for path, var in flat}


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


def torch_to_flax(state_dict: Mapping[str, Any], cfg: WhisperConfig, *, dtype=jnp.float32, seed: int = 0
                  ) -> Whisper:
    """Build the Flax model holding ``state_dict`` (openai names; torch tensors or numpy arrays).

    Parameters are stored in float32 whatever the input precision (fp16/bf16 widen exactly); ``dtype`` is the
    compute dtype. The model is returned in eval mode (dropout off); call ``.train()`` to train it. Missing,
    unexpected or mis-shaped tensors raise ``ValueError`` naming each tensor and both shapes.
    """
    abstract = nnx.eval_shape(lambda: Whisper(cfg, dtype=dtype, rngs=nnx.Rngs(seed)))
    graphdef, weights, rest = nnx.split(abstract, (nnx.Param, Buffer), ...)
    expected = _weight_paths(abstract)
    problems = [f"missing tensor {k!r} (expected shape {_torch_shape(p, v)})"
                for k, (p, v) in expected.items() if k not in state_dict]
    problems += [f"unexpected tensor {k!r} with shape {tuple(np.shape(state_dict[k]))}"
                 for k in state_dict if k not in expected]
    arrays = {}
    for name, (path, var) in expected.items():
        if name not in state_dict:
            continue
        x = _as_numpy(name, state_dict[name])
        want = _torch_shape(path, var)
        if x.shape != want:
            problems.append(f"tensor {name!r} has shape {x.shape}, expected {want}")
            continue
        if not np.issubdtype(x.dtype, np.floating):
            problems.append(f"tensor {name!r} has dtype {x.dtype}, expected a floating type")
            continue
        # a copy: jnp.asarray may alias the numpy buffer, which shares memory with the torch tensor
        arrays[path] = jnp.array(_from_torch_layout(path, x), dtype=var.value.dtype, copy=True)
    if problems:
        raise ValueError(f"state dict does not fit WhisperConfig {cfg}:\n  " + "\n  ".join(problems))
    flat = [(path, var.replace(arrays[path])) for path, var in nnx.to_flat_state(weights)]
    model = nnx.merge(graphdef, nnx.from_flat_state(flat), _concrete_rng_state(rest, seed))
    model.eval()
    return model


def _torch_shape(path: tuple, var: Any) -> tuple[int, ...]:
    shape = tuple(var.value.shape)
    if path[-1] == "kernel":
        shape = shape[::-1] if len(shape) == 2 else (shape[2], shape[1], shape[0])
    return shape


def _concrete_rng_state(abstract_rest, seed: int):
    """Real dropout RNG keys/counters for the abstract model (one independent stream per Dropout module)."""
    flat = list(nnx.to_flat_state(abstract_rest))
    keys = jax.random.split(jax.random.key(seed), max(len(flat), 1))
    out = []
    for i, (path, var) in enumerate(flat):
        if isinstance(var, nnx.RngKey):
            out.append((path, var.replace(keys[i])))
        elif isinstance(var, nnx.RngCount):
            out.append((path, var.replace(jnp.zeros((), jnp.uint32))))
        else:
            raise TypeError(f"unexpected non-parameter state {path}: {type(var).__name__}")
    return nnx.from_flat_state(out)


def flax_to_torch(model: Whisper) -> dict[str, torch.Tensor]:
    """openai-named state dict of float32 CPU tensors; ``torch_to_flax(flax_to_torch(m), cfg)`` is bit-exact."""
    import torch

    return {name: torch.from_numpy(x) for name, x in flax_to_numpy(model).items()}


def flax_to_numpy(model: Whisper) -> dict[str, np.ndarray]:
    """Like ``flax_to_torch`` but numpy arrays (no torch import)."""
    # np.array copies: the result never aliases (read-only) device buffers
    return {name: np.array(_to_torch_layout(path, np.asarray(var.value)), order="C")
            for name, (path, var) in _weight_paths(model).items()}


def num_params(model: Whisper) -> int:
    """Trainable parameters (the fixed encoder positions excluded)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ---------------------------------------------------------------------------------------------------------------
# checkpoint files


def detect_format(path: str | os.PathLike) -> str:
    """Which checkpoint format ``path`` holds; ValueError naming the path when none fits.

    ``flax-train`` is a training checkpoint of ``jax_whisper.train`` (one step directory, or a run's output
    directory, which resolves to its best checkpoint, else its latest).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    if p.is_dir() and (p / "config.json").is_file() and (p / "state").is_dir():
        return "flax"
    if p.is_dir() and (p / "params").is_dir() and (p / "meta").is_dir():
        return "flax-train"
    if p.is_dir() and ((p / "best").is_dir() or (p / "checkpoints").is_dir()):
        return "flax-train"
    if p.is_file() and p.suffix == ".safetensors":
        return "torch"
    raise ValueError(
        f"checkpoint {str(p)!r}: not a recognised format (expected a Flax checkpoint directory with config.json "
        f"and state/, a training run or checkpoint directory, or a .safetensors file written by this project)"
    )


def training_checkpoint(path: str | os.PathLike) -> Path:
    """The step directory a ``flax-train`` path means: itself, or a run's best (else latest) checkpoint."""
    p = Path(path)
    if (p / "params").is_dir():
        return p
    for sub in ("best", "checkpoints"):
        # orbax renames a finished step into place: in-progress ones carry a tmp suffix and are not digits
        steps = sorted((int(d.name) for d in (p / sub).glob("*") if d.name.isdigit()), reverse=True)
        if steps:
            return p / sub / str(steps[0])
    raise FileNotFoundError(f"training run {str(p)!r} holds no finished checkpoint in best/ or checkpoints/")


def load_checkpoint(path: str | os.PathLike, *, dtype=jnp.float32) -> tuple[WhisperConfig, Whisper]:
    """Load any supported checkpoint into the Flax model (eval mode). Returns ``(cfg, model)``."""
    fmt = detect_format(path)
    if fmt == "flax":
        return _load_flax(Path(path), dtype)
    if fmt == "flax-train":
        step_dir = training_checkpoint(path)
        meta = json.loads((step_dir / "meta" / "metadata").read_text())
        return _load_flax(step_dir, dtype, cfg=WhisperConfig.from_dict(meta["model_config"]), state="params")
    cfg, state_dict = load_torch_state(path)
    return cfg, torch_to_flax(state_dict, cfg, dtype=dtype)


def load_torch_state(path: str | os.PathLike) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    """Read a ``torch``-format checkpoint (safetensors, config in the metadata) as numpy arrays."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        if _CONFIG_KEY not in meta:
            raise ValueError(f"checkpoint {str(path)!r}: safetensors metadata has no {_CONFIG_KEY!r} entry")
        cfg = WhisperConfig.from_json(meta[_CONFIG_KEY])
        return cfg, {k: f.get_tensor(k) for k in f.keys()}


def save_checkpoint(model: Whisper, cfg: WhisperConfig, path: str | os.PathLike, format: str = "flax") -> Path:
    """Write ``model`` atomically in ``format`` ("flax" orbax directory, "torch" safetensors file)."""
    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose from {FORMATS}")
    path = Path(path)
    if format == "torch" and path.suffix != ".safetensors":
        raise ValueError(f"torch checkpoints are .safetensors files, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        if format == "flax":
            _save_flax(model, cfg, tmp / "ckpt")
        else:
            from safetensors.numpy import save_file

            save_file(flax_to_numpy(model), str(tmp / "ckpt"), metadata={_CONFIG_KEY: cfg.to_json()})
        _replace(tmp / "ckpt", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _replace(src: Path, dst: Path) -> None:
    """Move ``src`` over ``dst``: a file atomically; a directory by renaming the old one aside first."""
    if src.is_dir() and dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(src, dst)


def _save_flax(model: Whisper, cfg: WhisperConfig, path: Path) -> None:
    import orbax.checkpoint as ocp

    path.mkdir()
    (path / "config.json").write_text(cfg.to_json())
    weights = nnx.to_pure_dict(nnx.state(model, (nnx.Param, Buffer)))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save((path / "state").absolute(), weights)


def _load_flax(path: Path, dtype, *, cfg: WhisperConfig | None = None, state: str = "state"
               ) -> tuple[WhisperConfig, Whisper]:
    import orbax.checkpoint as ocp

    cfg = cfg or WhisperConfig.from_json((path / "config.json").read_text())
    abstract = nnx.eval_shape(lambda: Whisper(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, weights, rest = nnx.split(abstract, (nnx.Param, Buffer), ...)
    target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), nnx.to_pure_dict(weights))
    with ocp.StandardCheckpointer() as ckptr:
        try:
            restored = ckptr.restore((path / state).absolute(), target)
        except (ValueError, KeyError) as e:
            raise ValueError(f"checkpoint {str(path)!r} does not fit its config {cfg}: {e}") from e
    nnx.replace_by_pure_dict(weights, restored)
    model = nnx.merge(graphdef, weights, _concrete_rng_state(rest, 0))
    model.eval()
    return cfg, model
