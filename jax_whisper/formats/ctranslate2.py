"""Weights between frameworks and checkpoint formats.

Flax parameter paths map one-to-one onto openai-whisper's state-dict names::

    ('encoder', 'blocks', 0, 'attn', 'query', 'kernel')  <->  encoder.blocks.0.attn.query.weight   (transposed)
    ('decoder', 'blocks', 3, 'mlp', 'layers', 2, 'bias') <->  decoder.blocks.3.mlp.2.bias
    ('encoder', 'conv1', 'kernel') (k, in, out)          <->  encoder.conv1.weight (out, in, k)

Every other format is translated to those openai names first and then goes through ``torch_to_flax``, which
checks every tensor's presence and shape. ``load_checkpoint`` reads, recognising the format by itself:

- ``flax``: this project's orbax directory (``config.json`` + ``state/``), or a training run / step directory;
- ``torch``: this project's ``.safetensors`` file (openai names, the config in its metadata);
- ``openai``: an openai-whisper ``.pt`` (``{"dims": ..., "model_state_dict": ...}``, usually fp16);
- ``hf``: a Hugging Face transformers Whisper directory (``config.json`` + ``model.safetensors`` [sharded or
  not] or ``pytorch_model.bin``);
- ``ctranslate2``: a CTranslate2 / faster-whisper directory (``model.bin``), parsed here with numpy.

``save_checkpoint`` writes ``flax``, ``torch``, ``openai`` and ``hf``. Every write is atomic: a temporary
sibling is renamed into place, so an interrupted save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_whisper.config import WhisperConfig
from jax_whisper.model import Buffer, Whisper, sinusoids

if TYPE_CHECKING:
    import torch

FORMATS = ("flax", "torch", "openai", "hf")  # what save_checkpoint writes
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

_HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")
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
    """Load any supported checkpoint (format recognised from the files) into the Flax model (eval mode).

    Returns ``(cfg, model)``; parameters are float32 whatever the stored precision (fp16/bf16 widen exactly,
    CTranslate2 int8/int16 are dequantised with their scales).
    """
    fmt = detect_format(path)
    if fmt == "flax":
        return _load_flax(Path(path), dtype)
    if fmt == "flax-train":
        step_dir = training_checkpoint(path)
        meta = json.loads((step_dir / "meta" / "metadata").read_text())
        return _load_flax(step_dir, dtype, cfg=WhisperConfig.from_dict(meta["model_config"]), state="params")
    cfg, state_dict = load_state(path, fmt)
    try:
        return cfg, torch_to_flax(state_dict, cfg, dtype=dtype)
    except ValueError as e:  # name the file: the message itself names each tensor (openai names)
        raise ValueError(f"checkpoint {str(path)!r} ({fmt}): {e}") from e


def load_state(path: str | os.PathLike, fmt: str | None = None) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    """A ``torch``/``openai``/``hf``/``ctranslate2`` checkpoint as ``(cfg, openai-named numpy arrays)``.

    Float arrays may keep a reduced stored precision (an OpenAI or HF fp16 checkpoint stays fp16; bf16 and
    CTranslate2's quantised weights become float32); ``torch_to_flax`` and
    ``TorchWhisper(cfg).load_state_dict({k: torch.from_numpy(v) ...})`` both widen them exactly.
    """
    fmt = fmt or detect_format(path)
    readers = {"torch": load_torch_state, "openai": load_openai_state, "hf": load_hf_state,
               "ctranslate2": load_ct2_state}
    if fmt not in readers:
        raise ValueError(f"checkpoint {str(path)!r} is a {fmt} checkpoint (Flax state): use load_checkpoint")
    return readers[fmt](path)


def _config_from(source: Path, dims: Mapping[str, Any]) -> WhisperConfig:
    try:
        return WhisperConfig.from_dict(dims)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {str(source)!r}: dimensions {dict(dims)} do not make a WhisperConfig: {e}"
                         ) from e


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


def save_checkpoint(model: Whisper, cfg: WhisperConfig, path: str | os.PathLike, format: str = "flax") -> Path:
    """Write ``model`` atomically in ``format``.

    ``flax``: orbax directory; ``torch``: a ``.safetensors`` file; ``openai``: a ``.pt`` file that
    ``whisper.load_model(path)`` loads; ``hf``: a directory that
    ``transformers.WhisperForConditionalGeneration.from_pretrained(path)`` loads. Weights are float32.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose from {FORMATS}")
    path = Path(path)
    if format == "torch" and path.suffix != ".safetensors":
        raise ValueError(f"torch checkpoints are .safetensors files, got {str(path)!r}")
    if format == "hf":
        hf_config(cfg)  # fail before writing anything if the config has no Hugging Face equivalent
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        if format == "flax":
            _save_flax(model, cfg, tmp / "ckpt")
        elif format == "torch":
            from safetensors.numpy import save_file

            save_file(flax_to_numpy(model), str(tmp / "ckpt"), metadata={_CONFIG_KEY: cfg.to_json()})
        elif format == "openai":
            import torch

            torch.save({"dims": cfg.dims(), "model_state_dict": flax_to_torch(model)}, tmp / "ckpt")
        else:
            _save_hf(model, cfg, tmp / "ckpt")
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
    # whole on one device, however the writer had it laid out (a sharded training run's checkpoint included)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device), nnx.to_pure_dict(weights))
    with ocp.StandardCheckpointer() as ckptr:
        try:
            restored = ckptr.restore((path / state).absolute(), target)
        except (ValueError, KeyError) as e:
            raise ValueError(f"checkpoint {str(path)!r} does not fit its config {cfg}: {e}") from e
    nnx.replace_by_pure_dict(weights, restored)
    model = nnx.merge(graphdef, weights, _concrete_rng_state(rest, 0))
    model.eval()
    return cfg, model


# ---------------------------------------------------------------------------------------------------------------
# OpenAI whisper .pt


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


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face transformers

# inside `{encoder,decoder}.layers.N.` (HF) <-> inside `{encoder,decoder}.blocks.N.` (openai)
_HF_BLOCK = {
    "self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln",
}
_HF_TOP = {
    **{f"encoder.{c}.{p}": f"encoder.{c}.{p}" for c in ("conv1", "conv2") for p in ("weight", "bias")},
    "encoder.embed_positions.weight": "encoder.positional_embedding",
    "encoder.layer_norm.weight": "encoder.ln_post.weight", "encoder.layer_norm.bias": "encoder.ln_post.bias",
    "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
    "decoder.embed_positions.weight": "decoder.positional_embedding",
    "decoder.layer_norm.weight": "decoder.ln.weight", "decoder.layer_norm.bias": "decoder.ln.bias",
}
_HF_BLOCK_INV = {v: k for k, v in _HF_BLOCK.items()}
_HF_TOP_INV = {v: k for k, v in _HF_TOP.items()}
_HF_LAYER_RE = re.compile(r"(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)")
_OPENAI_BLOCK_RE = re.compile(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)")


def hf_to_openai_name(name: str) -> str | None:
    """``model.encoder.layers.0.self_attn.k_proj.weight`` -> ``encoder.blocks.0.attn.key.weight``; None if the
    name is not a Whisper weight (``proj_out.weight``, HF's tied copy of the token embedding, included)."""
    name = name.removeprefix("model.")  # WhisperForConditionalGeneration nests WhisperModel under `model`
    if name in _HF_TOP:
        return _HF_TOP[name]
    m = _HF_LAYER_RE.fullmatch(name)
    if m and m[3] in _HF_BLOCK:
        return f"{m[1]}.blocks.{m[2]}.{_HF_BLOCK[m[3]]}.{m[4]}"
    return None


def openai_to_hf_name(name: str) -> str:
    """Inverse of ``hf_to_openai_name`` (with WhisperForConditionalGeneration's ``model.`` prefix)."""
    if name in _HF_TOP_INV:
        return "model." + _HF_TOP_INV[name]
    m = _OPENAI_BLOCK_RE.fullmatch(name)
    if not (m and m[3] in _HF_BLOCK_INV):
        raise ValueError(f"tensor {name!r} has no Hugging Face name")
    return f"model.{m[1]}.layers.{m[2]}.{_HF_BLOCK_INV[m[3]]}.{m[4]}"


def config_from_hf(hf: Mapping[str, Any], source: str | os.PathLike = "config.json") -> WhisperConfig:
    """WhisperConfig of a transformers ``WhisperConfig`` dict; ValueError for what this model cannot compute."""
    if hf.get("model_type") != "whisper":
        raise ValueError(f"{str(source)!r}: model_type is {hf.get('model_type')!r}, expected 'whisper'")
    try:
        d = hf["d_model"]
        dims = dict(n_mels=hf["num_mel_bins"], n_audio_ctx=hf["max_source_positions"], n_audio_state=d,
                    n_audio_head=hf["encoder_attention_heads"], n_audio_layer=hf["encoder_layers"],
                    n_vocab=hf["vocab_size"], n_text_ctx=hf["max_target_positions"], n_text_state=d,
                    n_text_head=hf["decoder_attention_heads"], n_text_layer=hf["decoder_layers"])
    except KeyError as e:
        raise ValueError(f"{str(source)!r}: Whisper config has no {e.args[0]!r}") from None
    # Whisper proper has a 4x MLP, exact GELU and unscaled embeddings; other settings would load but compute
    # something else, so refuse them
    for key in ("encoder_ffn_dim", "decoder_ffn_dim"):
        if hf.get(key, 4 * d) != 4 * d:
            raise ValueError(f"{str(source)!r}: {key}={hf[key]}, but this model's MLP width is 4 * d_model = {4 * d}")
    if hf.get("activation_function", "gelu") != "gelu":
        raise ValueError(f"{str(source)!r}: activation_function={hf['activation_function']!r}, expected 'gelu'")
    if hf.get("scale_embedding", False):
        raise ValueError(f"{str(source)!r}: scale_embedding=true is not Whisper's (unscaled) embedding")
    return _config_from(Path(source), dims)


def special_token_ids(cfg: WhisperConfig) -> dict[str, int]:
    """``<|endoftext|>`` and ``<|startoftranscript|>`` ids of the vocabulary ``cfg.n_vocab`` implies.

    English-only (51864) and the seed vocabulary (50262 = GPT-2 + 5 specials) end text with 50256 and start a
    transcript with 50257; the multilingual ones (51865, large-v3's 51866) insert one more token: 50257/50258.
    """
    eot = 50257 if cfg.is_multilingual else 50256
    return {"eot": eot, "sot": eot + 1}


def hf_config(cfg: WhisperConfig) -> dict[str, Any]:
    """config.json of the transformers WhisperForConditionalGeneration equivalent to ``cfg``."""
    if cfg.n_audio_state != cfg.n_text_state:
        raise ValueError(f"Hugging Face Whisper has one d_model; n_audio_state={cfg.n_audio_state} != "
                         f"n_text_state={cfg.n_text_state}")
    d = cfg.n_audio_state
    ids = special_token_ids(cfg)
    # openai checkpoints on the hub use <|endoftext|> as bos, eos and pad, and start decoding at <|startoftranscript|>
    tokens = {"bos_token_id": ids["eot"], "eos_token_id": ids["eot"], "pad_token_id": ids["eot"],
              "decoder_start_token_id": ids["sot"], "begin_suppress_tokens": [220, ids["eot"]]}
    if ids["sot"] >= cfg.n_vocab:  # a custom vocabulary without Whisper's special tokens: leave them unset
        tokens = {k: None for k in tokens}
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "is_encoder_decoder": True,
        "vocab_size": cfg.n_vocab,
        "num_mel_bins": cfg.n_mels,
        "d_model": d,
        "encoder_layers": cfg.n_audio_layer,
        "encoder_attention_heads": cfg.n_audio_head,
        "decoder_layers": cfg.n_text_layer,
        "decoder_attention_heads": cfg.n_text_head,
        "encoder_ffn_dim": 4 * d,
        "decoder_ffn_dim": 4 * d,
        "max_source_positions": cfg.n_audio_ctx,
        "max_target_positions": cfg.n_text_ctx,
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "dropout": cfg.dropout,
        "attention_dropout": cfg.attn_dropout,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "init_std": 0.02,
        "use_cache": True,
        "dtype": "float32",
        **tokens,
    }


def load_hf_state(path: str | os.PathLike) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    """A transformers Whisper directory (``save_pretrained``): config.json + safetensors (sharded or not) or
    pytorch_model.bin, HF names mapped to openai's."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"Hugging Face checkpoint {str(path)!r} has no config.json")
    cfg = config_from_hf(json.loads(config_file.read_text()), config_file)
    tensors = _read_hf_weights(path)
    state, unknown = {}, []
    for k, v in tensors.items():
        name = hf_to_openai_name(k)
        if name is None:
            unknown.append(k)
        else:
            state[name] = v
    if "proj_out.weight" in unknown:  # the output projection is tied to the token embedding: same values
        unknown.remove("proj_out.weight")
        if not np.array_equal(tensors["proj_out.weight"], state.get("decoder.token_embedding.weight")):
            raise ValueError(f"checkpoint {str(path)!r}: proj_out.weight differs from the token embedding; "
                             f"Whisper ties them and so does this model")
    if unknown:
        raise ValueError(f"checkpoint {str(path)!r}: tensors that are not Whisper weights: {sorted(unknown)[:8]}")
    if "encoder.positional_embedding" not in state:  # fixed sinusoids, which some exports leave out
        state["encoder.positional_embedding"] = np.asarray(sinusoids(cfg.n_audio_ctx, cfg.n_audio_state))
    return cfg, state


def _read_hf_weights(path: Path) -> dict[str, np.ndarray]:
    import torch

    index = {"safetensors": path / "model.safetensors.index.json", "bin": path / "pytorch_model.bin.index.json"}
    if (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif index["safetensors"].is_file():
        files = sorted({path / f for f in json.loads(index["safetensors"].read_text())["weight_map"].values()})
    elif (path / "pytorch_model.bin").is_file():
        files = [path / "pytorch_model.bin"]
    elif index["bin"].is_file():
        files = sorted({path / f for f in json.loads(index["bin"].read_text())["weight_map"].values()})
    else:
        raise ValueError(f"Hugging Face checkpoint {str(path)!r} has no weights (expected one of "
                         f"{', '.join(_HF_WEIGHT_FILES)})")
    tensors = {}
    for f in files:
        if not f.is_file():
            raise ValueError(f"checkpoint {str(path)!r}: shard {f.name!r} named by the index is missing")
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as st:  # "pt", not "numpy": numpy cannot hold bf16 weights
                tensors.update({k: _as_numpy(k, st.get_tensor(k)) for k in st.keys()})
        else:
            try:
                sd = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"checkpoint file {str(f)!r}: not a readable torch file ({e})") from e
            tensors.update({k: _as_numpy(k, v) for k, v in sd.items()})
    return tensors


def _save_hf(model: Whisper, cfg: WhisperConfig, path: Path) -> None:
    from safetensors.numpy import save_file

    path.mkdir()
    # proj_out.weight is left out: transformers ties it to the token embedding, as save_pretrained does
    tensors = {openai_to_hf_name(k): v for k, v in flax_to_numpy(model).items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})  # transformers checks "format"
    (path / "config.json").write_text(json.dumps(hf_config(cfg), indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# CTranslate2 (faster-whisper) model.bin
#
# Layout (ctranslate2/specs/model_spec.py `_serialize`, little-endian): u32 binary version; string spec name;
# u32 spec revision; u32 variable count; per variable: string name, u8 rank, u32 x rank shape, u8 dtype id,
# u32 byte count, raw data; u32 alias count; per alias: string alias, string target. A string is a u16 length
# that counts a trailing NUL, then the bytes. Versions 4-6 share this layout (older ones stored an item size
# instead of the dtype id).

_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")  # dtype ids: CTranslate2's DataType
_CT2_NUMPY = {"float32": np.float32, "int8": np.int8, "int16": np.int16, "int32": np.int32, "float16": np.float16,
              "bfloat16": np.uint16}  # bfloat16 is read as its bit pattern and widened below
_CT2_VERSIONS = range(4, 7)
_CT2_REVISION = 3  # WhisperSpec's revision in ctranslate2 4.x
# flags CTranslate2's WhisperSpec fixes; anything else would be a different computation
_CT2_FLAGS = {"decoder/pre_norm": 1, "decoder/activation": 3, "decoder/alibi": 0,  # activation 3: exact GELU
              "decoder/start_from_zero_embedding": 0}


class _Ct2Reader:
    """Sequential little-endian reads from model.bin; a short read names what was cut off and where."""

    def __init__(self, f, path: Path):
        self.f, self.path = f, path

    def read(self, n: int, what: str) -> bytes:
        offset = self.f.tell()
        data = self.f.read(n)
        if len(data) != n:
            raise ValueError(f"{str(self.path)!r} is truncated: {what} needs {n} bytes at offset {offset}, "
                             f"{len(data)} left")
        return data

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("H", what)
        return self.read(n, what)[:-1].decode("utf-8")


def read_ct2(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse a CTranslate2 ``model.bin`` (or its directory): ``(header, variables)``.

    ``header`` holds ``binary_version``, ``spec``, ``revision`` and ``aliases`` ({alias: target}). Variables
    keep their stored dtype except bfloat16, widened (exactly) to float32. An alias maps to its target's array,
    and so does its ``_scale``, as CTranslate2 itself registers them.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    with open(path, "rb") as f:
        r = _Ct2Reader(f, path)
        version = r.unpack("I", "the binary version")
        if version not in _CT2_VERSIONS:
            raise ValueError(f"{str(path)!r}: unsupported CTranslate2 binary version {version} (this reader "
                             f"handles {_CT2_VERSIONS.start}-{_CT2_VERSIONS.stop - 1})")
        header = {"binary_version": version, "spec": r.string("the spec name"),
                  "revision": r.unpack("I", "the spec revision"), "aliases": {}}
        variables: dict[str, np.ndarray] = {}
        for i in range(r.unpack("I", "the variable count")):
            name = r.string(f"the name of variable {i}")
            rank = r.unpack("B", f"the rank of {name!r}")
            shape = struct.unpack(f"<{rank}I", r.read(4 * rank, f"the shape of {name!r}"))
            type_id = r.unpack("B", f"the dtype of {name!r}")
            nbytes = r.unpack("I", f"the size of {name!r}")
            if type_id >= len(_CT2_DTYPES):
                raise ValueError(f"{str(path)!r}: variable {name!r} has unknown dtype id {type_id}")
            np_dtype = np.dtype(_CT2_NUMPY[_CT2_DTYPES[type_id]])
            if nbytes != int(np.prod(shape)) * np_dtype.itemsize:
                raise ValueError(f"{str(path)!r}: variable {name!r} of shape {shape} and dtype "
                                 f"{_CT2_DTYPES[type_id]} declares {nbytes} bytes")
            x = np.frombuffer(r.read(nbytes, f"the data of {name!r}"), np_dtype).reshape(shape)
            if _CT2_DTYPES[type_id] == "bfloat16":
                x = (x.astype(np.uint32) << 16).view(np.float32)  # bf16 is the top half of a float32
            variables[name] = x
        for i in range(r.unpack("I", "the alias count")):
            alias = r.string(f"alias {i}")
            target = header["aliases"][alias] = r.string(f"the target of alias {alias!r}")
            for suffix in ("", "_scale"):
                if target + suffix in variables:
                    variables[alias + suffix] = variables[target + suffix]
    return header, variables


def _ct2_float(variables: Mapping[str, np.ndarray], name: str, source: Path) -> np.ndarray:
    """Variable ``name`` as float32: floats widen exactly, int8/int16 weights are dequantised with their scale."""
    if name not in variables:
        raise ValueError(f"{str(source)!r}: missing tensor {name!r}")
    x = variables[name]
    if x.dtype in (np.int8, np.int16):
        scale = variables.get(name + "_scale")
        if scale is None:
            raise ValueError(f"{str(source)!r}: {name!r} is {x.dtype} but its scale {name + '_scale'!r} is missing")
        scale = scale.astype(np.float32)
        if x.dtype == np.int8:
            # one scale per output row (a conv's rows are its output channels): q = round(w * scale)
            if scale.shape != x.shape[:1]:
                raise ValueError(f"{str(source)!r}: {name + '_scale'!r} has shape {scale.shape}, expected "
                                 f"({x.shape[0]},) for {name!r} of shape {x.shape}")
            scale = scale.reshape(-1, *[1] * (x.ndim - 1))
        else:  # int16: one scale for the whole tensor
            if scale.size != 1:
                raise ValueError(f"{str(source)!r}: {name + '_scale'!r} has shape {scale.shape}, expected a scalar")
            scale = scale.reshape(())
        return x.astype(np.float32) / scale
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{str(source)!r}: tensor {name!r} has unsupported dtype {x.dtype}")
    return x.astype(np.float32)


def load_ct2_state(path: str | os.PathLike) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    """A CTranslate2 WhisperSpec model (faster-whisper's format) as openai-named float32 arrays.

    Dimensions come from the tensor shapes; head counts from the ``{encoder,decoder}/num_heads`` variables.
    Fused projections are split: self-attention ``linear_0`` rows are [q; k; v], cross-attention ``linear_0`` is
    q and ``linear_1`` is [k; v]. CTranslate2 stores a key bias (zeros: Whisper's key has none); it is dropped,
    which changes nothing in any case: a bias on the keys adds the same q.b to every score of a query, and
    softmax ignores a constant shift.
    """
    path = Path(path)
    source = path / "model.bin" if path.is_dir() else path
    header, v = read_ct2(source)
    if header["spec"] != "WhisperSpec":
        raise ValueError(f"{str(source)!r}: spec {header['spec']!r}, expected 'WhisperSpec'")
    if header["revision"] > _CT2_REVISION:
        raise ValueError(f"{str(source)!r}: WhisperSpec revision {header['revision']} is newer than this reader "
                         f"knows ({_CT2_REVISION})")
    for name, want in _CT2_FLAGS.items():
        if name in v and int(v[name]) != want:
            raise ValueError(f"{str(source)!r}: unsupported {name}={int(v[name])} (Whisper has {want})")
    scale_emb = v.get("decoder/scale_embeddings")  # False, or a float factor; Whisper's embedding is unscaled
    if scale_emb is not None and not (float(scale_emb) == 0 or (scale_emb.dtype.kind == "f" and scale_emb == 1)):
        raise ValueError(f"{str(source)!r}: unsupported decoder/scale_embeddings={scale_emb} (Whisper: unscaled)")

    get = lambda name: _ct2_float(v, name, source)  # noqa: E731
    conv1 = get("encoder/conv1/weight")
    if conv1.ndim != 3:
        raise ValueError(f"{str(source)!r}: encoder/conv1/weight has shape {conv1.shape}, expected (d, n_mels, 3)")
    enc_pos, dec_pos = get("encoder/position_encodings/encodings"), get("decoder/position_encodings/encodings")
    emb = get("decoder/embeddings/weight")

    def heads(scope: str) -> int:
        for name in (f"{scope}/num_heads", "num_heads"):  # before WhisperSpec revision 3 it was model-wide
            if name in v:
                return int(v[name])
        raise ValueError(f"{str(source)!r}: missing {scope}/num_heads (the head count is not in the shapes)")

    def n_layers(scope: str) -> int:
        found = {int(m[1]) for k in v if (m := re.match(rf"{scope}/layer_(\d+)/", k))}
        return max(found) + 1 if found else 0

    cfg = _config_from(source, dict(
        n_mels=conv1.shape[1], n_audio_ctx=enc_pos.shape[0], n_audio_state=conv1.shape[0],
        n_audio_head=heads("encoder"), n_audio_layer=n_layers("encoder"), n_vocab=emb.shape[0],
        n_text_ctx=dec_pos.shape[0], n_text_state=dec_pos.shape[1], n_text_head=heads("decoder"),
        n_text_layer=n_layers("decoder")))

    sd: dict[str, np.ndarray] = {
        "encoder.positional_embedding": enc_pos, "decoder.positional_embedding": dec_pos,
        "decoder.token_embedding.weight": emb,
    }

    def linear(ct2: str, ours: str) -> None:
        sd[f"{ours}.weight"], sd[f"{ours}.bias"] = get(f"{ct2}/weight"), get(f"{ct2}/bias")

    def norm(ct2: str, ours: str) -> None:
        sd[f"{ours}.weight"], sd[f"{ours}.bias"] = get(f"{ct2}/gamma"), get(f"{ct2}/beta")

    def fused(ct2: str, ours: list[str], d: int) -> None:
        w, b = get(f"{ct2}/weight"), get(f"{ct2}/bias")
        if w.shape[0] != len(ours) * d or b.shape != (len(ours) * d,):
            raise ValueError(f"{str(source)!r}: {ct2}/weight has shape {w.shape} and bias {b.shape}, expected "
                             f"{len(ours)} fused projections of {d} rows")
        for i, name in enumerate(ours):
            sd[f"{name}.weight"] = w[i * d:(i + 1) * d]
            if not name.endswith(".key"):
                sd[f"{name}.bias"] = b[i * d:(i + 1) * d]

    linear("encoder/conv1", "encoder.conv1")
    linear("encoder/conv2", "encoder.conv2")
    norm("encoder/layer_norm", "encoder.ln_post")
    norm("decoder/layer_norm", "decoder.ln")
    for kind, n, d in (("encoder", cfg.n_audio_layer, cfg.n_audio_state),
                       ("decoder", cfg.n_text_layer, cfg.n_text_state)):
        for i in range(n):
            ct2, ours = f"{kind}/layer_{i}", f"{kind}.blocks.{i}"
            norm(f"{ct2}/self_attention/layer_norm", f"{ours}.attn_ln")
            fused(f"{ct2}/self_attention/linear_0", [f"{ours}.attn.{p}" for p in ("query", "key", "value")], d)
            linear(f"{ct2}/self_attention/linear_1", f"{ours}.attn.out")
            if kind == "decoder":
                norm(f"{ct2}/attention/layer_norm", f"{ours}.cross_attn_ln")
                fused(f"{ct2}/attention/linear_0", [f"{ours}.cross_attn.query"], d)
                fused(f"{ct2}/attention/linear_1", [f"{ours}.cross_attn.key", f"{ours}.cross_attn.value"], d)
                linear(f"{ct2}/attention/linear_2", f"{ours}.cross_attn.out")
            norm(f"{ct2}/ffn/layer_norm", f"{ours}.mlp_ln")
            linear(f"{ct2}/ffn/linear_0", f"{ours}.mlp.0")
            linear(f"{ct2}/ffn/linear_1", f"{ours}.mlp.2")

    # the output projection must be the token embedding (normally an alias of it)
    proj = v.get("decoder/projection/weight")
    if proj is not None and proj is not v["decoder/embeddings/weight"] and not np.array_equal(
            get("decoder/projection/weight"), emb):
        raise ValueError(f"{str(source)!r}: decoder/projection/weight differs from decoder/embeddings/weight; "
                         f"Whisper ties them and so does this model")
    if "decoder/projection/bias" in v and np.any(get("decoder/projection/bias")):
        raise ValueError(f"{str(source)!r}: decoder/projection/bias is not zero; Whisper's logits have no bias")
    return cfg, sd


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
