"""CTranslate2 / faster-whisper model directories (``model.bin`` + ``config.json``), parsed here with numpy:
``read_ct2`` and the translation of its variables to openai names, dequantising int8/int16 with their scales.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jax_whisper.config import WhisperConfig
from jax_whisper.formats.reading import _config_from

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


def ct2_config(directory: str | os.PathLike, cfg: WhisperConfig) -> dict[str, Any]:
    """A CTranslate2 directory's ``config.json`` (``{}`` if it has none), checked against the model.

    faster-whisper reads ``alignment_heads`` ([layer, head] pairs of the decoder), ``lang_ids``, ``suppress_ids``
    and ``suppress_ids_begin`` (token ids) from it; a file that is not a JSON object, or a field out of the
    model's range, raises ValueError naming the file and the field."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(path)!r}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r}: expected a JSON object, got {type(config).__name__}")

    def ints(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)

    heads = config.get("alignment_heads")
    if heads is not None and not (isinstance(heads, list) and all(
            ints(h) and len(h) == 2 and 0 <= h[0] < cfg.n_text_layer and 0 <= h[1] < cfg.n_text_head for h in heads)):
        raise ValueError(f"{str(path)!r}: alignment_heads must be [layer, head] pairs within the decoder's "
                         f"{cfg.n_text_layer} layers x {cfg.n_text_head} heads, got {str(heads)[:80]}")
    for key in ("lang_ids", "suppress_ids", "suppress_ids_begin"):
        ids = config.get(key)
        if ids is not None and not (ints(ids) and all(-1 <= t < cfg.n_vocab for t in ids)):
            raise ValueError(f"{str(path)!r}: {key} must be a list of token ids below {cfg.n_vocab}, "
                             f"got {str(ids)[:80]}")
    return config


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

    if path.is_dir():
        ct2_config(path, cfg)  # a corrupt config.json is refused here, not left for faster-whisper to trip on
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
# writing: what ctranslate2's own converter (TransformersConverter on a Hugging Face export) writes, byte for byte

CT2_QUANTIZATIONS = ("float32", "float16", "bfloat16", "int8", "int8_float32", "int8_float16", "int8_bfloat16",
                     "int16")  # ctranslate2's ACCEPTED_MODEL_TYPES
_CT2_BINARY_VERSION = 6  # what ctranslate2 4.x writes
_CT2_INT8 = ("int8", "int8_float32", "int8_float16", "int8_bfloat16")


def ct2_variables(sd: Mapping[str, np.ndarray], cfg: WhisperConfig) -> dict[str, np.ndarray]:
    """openai-named float32 arrays -> WhisperSpec's variables (float32, before aliasing and quantisation), the
    inverse of :func:`load_ct2_state`: [q; k; v] fused with a zero key bias, cross-attention q and [k; v]."""
    f32 = lambda name: np.asarray(sd[name], np.float32)  # noqa: E731
    v: dict[str, np.ndarray] = {}

    def linear(ct2: str, ours: str) -> None:
        v[f"{ct2}/weight"], v[f"{ct2}/bias"] = f32(f"{ours}.weight"), f32(f"{ours}.bias")

    def norm(ct2: str, ours: str) -> None:
        v[f"{ct2}/gamma"], v[f"{ct2}/beta"] = f32(f"{ours}.weight"), f32(f"{ours}.bias")

    def fused(ct2: str, ours: list[str]) -> None:
        v[f"{ct2}/weight"] = np.concatenate([f32(f"{p}.weight") for p in ours])
        v[f"{ct2}/bias"] = np.concatenate([np.zeros_like(f32(f"{p}.weight")[:, 0]) if p.endswith(".key")
                                           else f32(f"{p}.bias") for p in ours])

    linear("encoder/conv1", "encoder.conv1")
    linear("encoder/conv2", "encoder.conv2")
    v["encoder/position_encodings/encodings"] = f32("encoder.positional_embedding")
    norm("encoder/layer_norm", "encoder.ln_post")
    v["encoder/num_heads"] = np.int16(cfg.n_audio_head)
    v["decoder/embeddings/weight"] = f32("decoder.token_embedding.weight")
    v["decoder/position_encodings/encodings"] = f32("decoder.positional_embedding")
    norm("decoder/layer_norm", "decoder.ln")
    v["decoder/projection/weight"] = f32("decoder.token_embedding.weight")  # tied: stored as an alias
    # the flags WhisperSpec fixes (TransformerDecoderSpec: pre-norm, exact GELU, no ALiBi, unscaled embeddings)
    v.update({"decoder/num_heads": np.int16(cfg.n_text_head), "decoder/pre_norm": np.int8(1),
              "decoder/activation": np.int8(3), "decoder/alignment_layer": np.int16(-1),
              "decoder/alignment_heads": np.int16(1), "decoder/scale_embeddings": np.int8(0),
              "decoder/alibi": np.int8(0), "decoder/alibi_use_positive_positions": np.int8(0),
              "decoder/scale_alibi": np.int8(0), "decoder/start_from_zero_embedding": np.int8(0)})
    for kind, n in (("encoder", cfg.n_audio_layer), ("decoder", cfg.n_text_layer)):
        for i in range(n):
            ct2, ours = f"{kind}/layer_{i}", f"{kind}.blocks.{i}"
            norm(f"{ct2}/self_attention/layer_norm", f"{ours}.attn_ln")
            fused(f"{ct2}/self_attention/linear_0", [f"{ours}.attn.{p}" for p in ("query", "key", "value")])
            linear(f"{ct2}/self_attention/linear_1", f"{ours}.attn.out")
            if kind == "decoder":
                norm(f"{ct2}/attention/layer_norm", f"{ours}.cross_attn_ln")
                linear(f"{ct2}/attention/linear_0", f"{ours}.cross_attn.query")
                fused(f"{ct2}/attention/linear_1", [f"{ours}.cross_attn.key", f"{ours}.cross_attn.value"])
                linear(f"{ct2}/attention/linear_2", f"{ours}.cross_attn.out")
            norm(f"{ct2}/ffn/layer_norm", f"{ours}.mlp_ln")
            linear(f"{ct2}/ffn/linear_0", f"{ours}.mlp.0")
            linear(f"{ct2}/ffn/linear_1", f"{ours}.mlp.2")
    return v


def _ct2_aliases(v: Mapping[str, np.ndarray]) -> dict[str, str]:
    """ctranslate2's rule (LayerSpec._alias_variables): a non-scalar variable equal, element for element, to one
    earlier in name order becomes an alias of the first such one."""
    names = sorted(v)
    aliases: dict[str, str] = {}
    for j, name in enumerate(names):
        if v[name].ndim == 0:
            continue
        for other in names[:j]:
            if v[name].shape == v[other].shape and np.array_equal(v[name], v[other]):
                aliases[name] = other
                break
    return aliases


def _ct2_quantize(v: dict[str, np.ndarray], quantization: str | None) -> dict[str, np.ndarray]:
    """ctranslate2's ``LayerSpec._quantize``, with the same float32 arithmetic: the weights of linear, conv and
    embedding layers (those with a ``weight_scale``) become int8 with one scale per output row (127 / max|row|) or
    int16 with one per tensor (2^10 / max|tensor|); every other float converts to the compute type."""
    import ml_dtypes

    floats = {"float16": np.float16, "int8_float16": np.float16, "bfloat16": ml_dtypes.bfloat16,
              "int8_bfloat16": ml_dtypes.bfloat16}.get(quantization, np.float32)
    out: dict[str, np.ndarray] = {}
    for name, x in v.items():
        if x.ndim == 0 or quantization is None:
            out[name] = x
            continue
        weight = name.endswith("/weight") and x.ndim >= 2  # every WhisperSpec variable with a weight_scale
        if weight and quantization == "int16":
            x = x.astype(np.float32)
            scale = np.float32(2**10 / np.amax(np.absolute(x)))
            out[name] = np.clip(np.rint(x * scale), np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype(np.int16)
            out[name + "_scale"] = scale
        elif weight and quantization in _CT2_INT8:
            rows = x.astype(np.float32).reshape(x.shape[0], -1)
            amax = np.amax(np.absolute(rows), axis=1)
            amax[amax == 0] = 127.0
            amax = np.maximum(amax, np.float32(127) / np.finfo(np.float32).max)  # a finite scale for tiny rows
            scale = 127.0 / amax
            out[name] = np.rint(rows * np.expand_dims(scale, 1)).astype(np.int8).reshape(x.shape)
            out[name + "_scale"] = scale
        else:
            out[name] = x.astype(floats)
    return out


def _ct2_model_bin(v: Mapping[str, np.ndarray], aliases: Mapping[str, str]) -> bytes:
    """The model.bin layout :func:`read_ct2` reads; variables and aliases in name order, as ctranslate2 does."""
    def string(s: str) -> bytes:
        b = s.encode("utf-8")
        return struct.pack("<H", len(b) + 1) + b + b"\0"

    parts = [struct.pack("<I", _CT2_BINARY_VERSION), string("WhisperSpec"), struct.pack("<I", _CT2_REVISION)]
    stored = sorted(k for k in v if k not in aliases)
    parts.append(struct.pack("<I", len(stored)))
    for name in stored:
        x = np.asarray(v[name])  # a scalar stays rank 0 (ascontiguousarray would make it (1,))
        dtype = "bfloat16" if x.dtype.name == "bfloat16" else x.dtype.name
        parts += [string(name), struct.pack(f"<B{x.ndim}I", x.ndim, *x.shape),
                  struct.pack("<BI", _CT2_DTYPES.index(dtype), x.nbytes), x.tobytes()]
    parts.append(struct.pack("<I", len(aliases)))
    parts += [string(a) + string(aliases[a]) for a in sorted(aliases)]
    return b"".join(parts)


def _save_ct2(sd: Mapping[str, np.ndarray], cfg: WhisperConfig, path: Path, heads: list[list[int]],
              quantization: str | None) -> None:
    """A faster-whisper model directory for ``cfg``'s vocabulary (one of this project's tokenizers)."""
    from jax_whisper.formats.huggingface import _write_json, hf_tokenizer_files, suppress_ids
    from jax_whisper.tokenizer import get_tokenizer, vocabulary_strings

    v = ct2_variables(sd, cfg)
    aliases = _ct2_aliases(v)  # compared before quantising, as ctranslate2 does
    v = _ct2_quantize({k: x for k, x in v.items() if k not in aliases}, quantization)
    tok = get_tokenizer(cfg)
    path.mkdir()
    (path / "model.bin").write_bytes(_ct2_model_bin(v, aliases))
    _write_json(path / "config.json", {
        "alignment_heads": heads, "lang_ids": sorted(tok.all_language_tokens), "suppress_ids": suppress_ids(tok),
        "suppress_ids_begin": [220, tok.eot]})
    (path / "vocabulary.json").write_text(json.dumps(vocabulary_strings(tok), indent=2), encoding="utf-8")
    files = hf_tokenizer_files(cfg)
    for name in ("tokenizer.json", "preprocessor_config.json"):
        _write_json(path / name, files[name])
