"""Hugging Face transformers Whisper directories (``config.json`` + ``model.safetensors`` [sharded or not] or
``pytorch_model.bin``): the name mapping to openai names, the config translation both ways, the reader and the
writer.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jax_whisper.config import WhisperConfig
from jax_whisper.formats.reading import _HF_WEIGHT_FILES, _as_numpy, _config_from

if TYPE_CHECKING:
    from jax_whisper.model import Whisper



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
        from jax_whisper.model import sinusoids  # (jax: only for such an export)

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


def hf_generation_config(cfg: WhisperConfig, heads: list[list[int]]) -> dict[str, Any]:
    """generation_config.json: what ``generate()`` needs besides the weights (decoder start, end, the suppressed
    and begin-suppressed ids, the no-timestamps and previous-text tokens, languages and tasks) and the alignment
    heads, with the ids of ``cfg``'s tokenizer. ctranslate2's converter reads the same fields."""
    from jax_whisper.tokenizer import get_tokenizer

    tok = get_tokenizer(cfg)
    # languages and tasks only for a multilingual model: with lang_to_id, generate() detects a language and
    # prompts an English-only model with it (the hub's .en models have neither)
    tasks = {task: i for task, i in (("transcribe", tok.transcribe), ("translate", tok.translate)) if i is not None}
    languages = {f"<|{code}|>": i for code, i in zip(tok.all_language_codes, tok.all_language_tokens, strict=True)}
    return {
        **({"lang_to_id": languages, "task_to_id": tasks} if tok.is_multilingual else {}),
        "alignment_heads": heads,
        "begin_suppress_tokens": [220, tok.eot],
        "bos_token_id": tok.eot, "eos_token_id": tok.eot, "pad_token_id": tok.eot,
        "decoder_start_token_id": tok.sot,
        "is_multilingual": tok.is_multilingual,
        "max_initial_timestamp_index": 50,
        "max_length": cfg.n_text_ctx,
        "no_timestamps_token_id": tok.no_timestamps,
        "prev_sot_token_id": tok.sot_prev,
        "suppress_tokens": suppress_ids(tok),
    }


def suppress_ids(tok) -> list[int]:
    """openai-whisper's ``suppress_tokens="-1"``: the non-speech symbols and the special tokens that are never
    text (start of transcript, tasks, previous text, LM start, no speech), sorted."""
    specials = (tok.sot, tok.transcribe, tok.translate, tok.sot_prev, tok.sot_lm, tok.no_speech)
    return sorted({*tok.non_speech_tokens, *(i for i in specials if i is not None)})


def hf_tokenizer_files(cfg: WhisperConfig) -> dict[str, dict[str, Any]]:
    """The tokenizer and feature-extractor files of a hub Whisper directory, for ``cfg``'s vocabulary:
    ``tokenizer.json`` (faster-whisper reads it too), ``tokenizer_config.json`` and ``preprocessor_config.json``
    (``WhisperProcessor``; faster-whisper takes the mel count from it)."""
    from jax_whisper.audio import HOP_LENGTH, N_FFT, SAMPLE_RATE
    from jax_whisper.tokenizer import EOT, get_tokenizer, hf_tokenizer_json, hub_name

    tok = get_tokenizer(cfg)
    window = cfg.n_frames * HOP_LENGTH  # the encoder's window (30 s for OpenAI's models; the seed's 5 s)
    # transformers finds the first timestamp as the last of these + 1: <|notimestamps|> must end the list
    specials = [hub_name(tok, name) for name, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
                if name != EOT and i <= tok.no_timestamps]
    return {
        "tokenizer.json": hf_tokenizer_json(tok),
        "tokenizer_config.json": {
            "tokenizer_class": "WhisperTokenizer", "bos_token": EOT, "eos_token": EOT, "pad_token": EOT,
            "unk_token": EOT, "additional_special_tokens": specials, "add_prefix_space": False, "errors": "replace",
            "model_max_length": 1024, "clean_up_tokenization_spaces": False, "processor_class": "WhisperProcessor"},
        "preprocessor_config.json": {
            "feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "WhisperProcessor",
            "feature_size": cfg.n_mels, "sampling_rate": SAMPLE_RATE, "hop_length": HOP_LENGTH, "n_fft": N_FFT,
            "chunk_length": window // SAMPLE_RATE, "n_samples": window, "nb_max_frames": cfg.n_frames,
            "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False},
    }


def known_vocabulary(cfg: WhisperConfig) -> bool:
    """Whether ``cfg.n_vocab`` is one of the project's tokenizers' (seed, English-only, multilingual)."""
    from jax_whisper.tokenizer import get_tokenizer

    try:
        get_tokenizer(cfg)
    except ValueError:
        return False
    return True


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _save_hf(model: Whisper, cfg: WhisperConfig, path: Path, heads: list[list[int]]) -> None:
    from safetensors.numpy import save_file

    from jax_whisper.formats.mapping import flax_to_numpy

    path.mkdir()
    # proj_out.weight is left out: transformers ties it to the token embedding, as save_pretrained does
    tensors = {openai_to_hf_name(k): v for k, v in flax_to_numpy(model).items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})  # transformers checks "format"
    _write_json(path / "config.json", hf_config(cfg))
    if known_vocabulary(cfg):  # a custom vocabulary has no tokenizer here: weights and config only
        _write_json(path / "generation_config.json", hf_generation_config(cfg, heads))
        for name, data in hf_tokenizer_files(cfg).items():
            _write_json(path / name, data)
