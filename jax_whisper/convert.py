"""Weights between frameworks and checkpoint formats.

The public façade over :mod:`jax_whisper.formats`: ``load_checkpoint`` reads, recognising the format by itself,
``save_checkpoint`` writes, ``torch_to_flax`` / ``flax_to_torch`` move weights between the frameworks
(:mod:`jax_whisper.formats.mapping`). The formats, one module each in :mod:`jax_whisper.formats`:

- ``flax``: this project's orbax directory (``config.json`` + ``state/``), or a training run / step directory;
- ``torch``: this project's ``.safetensors`` file (openai names, the config in its metadata);
- ``openai``: an openai-whisper ``.pt`` (``{"dims": ..., "model_state_dict": ...}``, usually fp16);
- ``hf``: a Hugging Face transformers Whisper directory (``config.json`` + ``model.safetensors`` [sharded or
  not] or ``pytorch_model.bin``);
- ``ctranslate2``: a CTranslate2 / faster-whisper directory (``model.bin``), parsed and written here with numpy.

``save_checkpoint`` writes all five but ``flax-train``. Every write is atomic: a temporary
sibling is renamed into place, so an interrupted save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import jax.numpy as jnp

from jax_whisper.config import WhisperConfig, alignment_heads, checked_alignment_heads
from jax_whisper.formats.ctranslate2 import CT2_QUANTIZATIONS, _save_ct2, ct2_config
from jax_whisper.formats.huggingface import _save_hf, hf_config, known_vocabulary
from jax_whisper.formats.mapping import flax_to_numpy, flax_to_torch, num_params, torch_to_flax
from jax_whisper.formats.native import _load_flax, _save_flax, training_checkpoint
from jax_whisper.formats.reading import _CONFIG_KEY, _reading, detect_format, load_state, resolve_model
from jax_whisper.model import Whisper

FORMATS = ("flax", "torch", "openai", "hf", "ctranslate2")  # what save_checkpoint writes


# ---------------------------------------------------------------------------------------------------------------
# checkpoint files

def load_checkpoint(path: str | os.PathLike, *, dtype=jnp.float32) -> tuple[WhisperConfig, Whisper]:
    """Load any supported checkpoint (format recognised from the files) into the Flax model (eval mode).

    Returns ``(cfg, model)``; parameters are float32 whatever the stored precision (fp16/bf16 widen exactly,
    CTranslate2 int8/int16 are dequantised with their scales). ``model.alignment_heads`` are the checkpoint's
    (:func:`checkpoint_alignment_heads`).
    """
    fmt = detect_format(path)
    with _reading(path, fmt):
        if fmt == "flax":
            cfg, model = _load_flax(Path(path), dtype)
        elif fmt == "flax-train":
            step_dir = training_checkpoint(path)
            meta = json.loads((step_dir / "meta" / "metadata").read_text())
            cfg, model = _load_flax(step_dir, dtype, cfg=WhisperConfig.from_dict(meta["model_config"]),
                                    state="params")
        else:
            cfg, state_dict = load_state(path, fmt)
            try:  # a readable checkpoint whose tensors do not fit its dims: every misfit tensor is named, untruncated
                model = torch_to_flax(state_dict, cfg, dtype=dtype)
            except ValueError as e:
                raise ValueError(f"checkpoint {str(path)!r} ({fmt}): {e}") from e
        model.set_alignment_heads(checkpoint_alignment_heads(path, cfg))
    return cfg, model


def save_checkpoint(model: Whisper, cfg: WhisperConfig, path: str | os.PathLike, format: str = "flax", *,
                    overwrite: bool = False, inputs: Iterable[str | os.PathLike] = (),
                    heads: list[list[int]] | None = None, quantization: str | None = None) -> Path:
    """Write ``model`` atomically in ``format``.

    ``flax``: orbax directory; ``torch``: a ``.safetensors`` file; ``openai``: a ``.pt`` file that
    ``whisper.load_model(path)`` loads; ``hf``: a directory that
    ``transformers.WhisperForConditionalGeneration.from_pretrained(path)`` loads, with ``generation_config.json``
    and the tokenizer files; ``ctranslate2``: a directory faster-whisper loads (``model.bin``, ``config.json``,
    ``vocabulary.json``, ``tokenizer.json``, ``preprocessor_config.json``), as ctranslate2's own converter writes
    it, stored in ``quantization`` (:data:`CT2_QUANTIZATIONS`; default float32). Other formats are float32.

    ``heads``: the alignment heads (``[layer, head]`` pairs) the ``hf`` and ``ctranslate2`` exports carry; default
    the model's own (``model.alignment_heads``: a loaded checkpoint's, see :func:`load_checkpoint`).

    An existing ``path`` is replaced only if it is a checkpoint of ``format`` (or an empty directory): anything
    else (a directory of other files, another format) raises FileExistsError unless ``overwrite``. A ``path`` that
    is, or holds, one of ``inputs`` (the checkpoints the model was read from) is never replaced.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose from {FORMATS}")
    if quantization is not None and (format != "ctranslate2" or quantization not in CT2_QUANTIZATIONS):
        raise ValueError(f"quantization {quantization!r}: " + (
            f"choose from {', '.join(CT2_QUANTIZATIONS)}" if format == "ctranslate2"
            else "only CTranslate2 exports are quantised"))
    path = Path(path)
    if format == "torch" and path.suffix != ".safetensors":
        raise ValueError(f"torch checkpoints are .safetensors files, got {str(path)!r}")
    _check_target(path, format, overwrite, inputs)
    if heads is None:  # the model's own, if it is the model cfg describes
        heads = model.alignment_heads if model.cfg.dims() == cfg.dims() else alignment_heads(cfg)
    heads = [list(h) for h in checked_alignment_heads(heads, cfg)]
    if format == "hf":
        hf_config(cfg)  # fail before writing anything if the config has no Hugging Face equivalent
    if format == "ctranslate2" and not known_vocabulary(cfg):
        raise ValueError(f"a CTranslate2 model needs its vocabulary written out: n_vocab {cfg.n_vocab} is none of "
                         f"this project's tokenizers' (seed 50262, English-only 51864, multilingual 51865/51866)")
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
        elif format == "hf":
            _save_hf(model, cfg, tmp / "ckpt", heads)
        else:
            _save_ct2(flax_to_numpy(model), cfg, tmp / "ckpt", heads, quantization)
        _replace(tmp / "ckpt", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def checkpoint_alignment_heads(path: str | os.PathLike, cfg: WhisperConfig) -> list[list[int]]:
    """The alignment heads a checkpoint carries: CTranslate2's ``config.json``, a Hugging Face directory's
    ``generation_config.json``, an OpenAI ``.pt`` by its model name (``tiny.en.pt``: openai-whisper's table);
    otherwise openai-whisper's default (:func:`jax_whisper.config.alignment_heads`)."""
    p = Path(path)
    fmt = detect_format(p)
    stored = None
    if fmt == "ctranslate2":
        stored = ct2_config(p if p.is_dir() else p.parent, cfg).get("alignment_heads")
    elif fmt == "hf" and (p / "generation_config.json").is_file():
        with _reading(p, fmt):
            stored = json.loads((p / "generation_config.json").read_text(encoding="utf-8")).get("alignment_heads")
        if stored is not None and not (isinstance(stored, list) and all(
                isinstance(h, list) and len(h) == 2 and 0 <= h[0] < cfg.n_text_layer and 0 <= h[1] < cfg.n_text_head
                for h in stored)):
            raise ValueError(f"{str(p / 'generation_config.json')!r}: alignment_heads must be [layer, head] pairs "
                             f"within the decoder's {cfg.n_text_layer} layers x {cfg.n_text_head} heads")
    elif fmt == "openai":
        return alignment_heads(cfg, p.name.removesuffix(p.suffix))
    return [list(h) for h in stored] if stored else alignment_heads(cfg)


def _check_target(path: Path, format: str, overwrite: bool, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse to replace an input, a directory that holds one, or (unless ``overwrite``) what is not a checkpoint
    of ``format``: replacing renames the old path aside and deletes it."""
    if not (path.exists() or path.is_symlink()):
        return
    target = path.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if source == target or target in source.parents:
            raise ValueError(f"output {str(path)!r} is or holds the input {str(source)!r}; choose another output")
    if overwrite or (path.is_dir() and not any(path.iterdir())):
        return
    try:
        found = detect_format(path)
    except (OSError, ValueError):
        found = None
    if found != format:
        what = f"a {found} checkpoint" if found else ("a directory of other files" if path.is_dir() else "a file")
        raise FileExistsError(f"output {str(path)!r} exists and is {what}, not a {format} checkpoint: not replaced "
                              f"(--overwrite / overwrite=True replaces it)")


def _replace(src: Path, dst: Path) -> None:
    """Move ``src`` over ``dst``: a file atomically; a directory by renaming the old one aside first."""
    if src.is_dir() and dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(src, dst)


__all__ = ["CT2_QUANTIZATIONS", "FORMATS", "checkpoint_alignment_heads", "detect_format", "flax_to_numpy",
           "flax_to_torch", "load_checkpoint", "load_state", "num_params", "resolve_model",
           "save_checkpoint", "torch_to_flax", "training_checkpoint"]
