"""The Flax model's parameters under openai-whisper's state-dict names, and back.

Flax parameter paths map one-to-one onto openai-whisper's state-dict names::

    ('encoder', 'blocks', 0, 'attn', 'query', 'kernel')  <->  encoder.blocks.0.attn.query.weight   (transposed)
    ('decoder', 'blocks', 3, 'mlp', 'layers', 2, 'bias') <->  decoder.blocks.3.mlp.2.bias
    ('encoder', 'conv1', 'kernel') (k, in, out)          <->  encoder.conv1.weight (out, in, k)

Every checkpoint format (:mod:`jax_whisper.formats`) is translated to those names first and then goes through
``torch_to_flax``, which checks every tensor's presence and shape. Reading and writing files is left to the format
modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_whisper.config import WhisperConfig
from jax_whisper.formats.reading import _as_numpy
from jax_whisper.model import Buffer, Whisper

if TYPE_CHECKING:
    import torch


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


