"""Model dimensions: one frozen dataclass shared by the Flax model and the PyTorch reference.

Field names are openai-whisper's ``ModelDimensions`` so a config converts to and from an OpenAI
checkpoint's ``dims`` without renaming. Importing this module imports neither jax nor torch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class WhisperConfig:
    n_mels: int = 80
    n_audio_ctx: int = 1500
    n_audio_state: int = 384
    n_audio_head: int = 6
    n_audio_layer: int = 4
    n_vocab: int = 51865
    n_text_ctx: int = 448
    n_text_state: int = 384
    n_text_head: int = 6
    n_text_layer: int = 4
    dropout: float = 0.0  # on residual branches (training only)
    attn_dropout: float = 0.0  # on attention weights (training only)

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("dropout", "attn_dropout"):
                if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
                    raise ValueError(f"WhisperConfig.{f.name} must be in [0, 1), got {v!r}")
            elif not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise ValueError(f"WhisperConfig.{f.name} must be a positive int, got {v!r}")
        for kind in ("audio", "text"):
            state, head = getattr(self, f"n_{kind}_state"), getattr(self, f"n_{kind}_head")
            if state % head:
                raise ValueError(f"n_{kind}_state={state} is not divisible by n_{kind}_head={head}")
        if self.n_audio_state % 2:
            raise ValueError(f"n_audio_state={self.n_audio_state} must be even (sinusoidal positions)")

    @property
    def n_frames(self) -> int:
        """Mel frames in the model's full window (the stride-2 conv halves them)."""
        return 2 * self.n_audio_ctx

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        # openai-whisper: 99 languages, large-v3 added Cantonese (vocab 51866).
        return self.n_vocab - 51765 - int(self.is_multilingual)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> WhisperConfig:
        try:
            base = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
        return dataclasses.replace(base, **overrides)

    def dims(self) -> dict[str, int]:
        """openai-whisper's ModelDimensions as a dict (no dropout fields)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name.startswith("n_")}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WhisperConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown WhisperConfig fields {sorted(unknown)}")
        missing = {n for n in known if n.startswith("n_")} - set(d)
        if missing:
            raise ValueError(f"WhisperConfig is missing dimensions {sorted(missing)}")
        return cls(**dict(d))

    @classmethod
    def from_json(cls, s: str) -> WhisperConfig:
        return cls.from_dict(json.loads(s))


def _openai(n_state, n_head, n_layer, n_vocab, n_mels=80, n_text_layer=None):
    return WhisperConfig(
        n_mels=n_mels, n_audio_ctx=1500, n_audio_state=n_state, n_audio_head=n_head,
        n_audio_layer=n_layer, n_vocab=n_vocab, n_text_ctx=448, n_text_state=n_state,
        n_text_head=n_head, n_text_layer=n_text_layer or n_layer,
    )


PRESETS: dict[str, WhisperConfig] = {
    # The project's from-scratch model: GPT-2 vocabulary + 5 specials, 500-frame (5 s) window.
    "seed": WhisperConfig(
        n_mels=80, n_audio_ctx=250, n_audio_state=384, n_audio_head=6, n_audio_layer=6,
        n_vocab=50262, n_text_ctx=64, n_text_state=384, n_text_head=6, n_text_layer=6,
        dropout=0.1, attn_dropout=0.1,
    ),
    "tiny.en": _openai(384, 6, 4, 51864),
    "tiny": _openai(384, 6, 4, 51865),
    "base.en": _openai(512, 8, 6, 51864),
    "base": _openai(512, 8, 6, 51865),
    "small.en": _openai(768, 12, 12, 51864),
    "small": _openai(768, 12, 12, 51865),
    "medium.en": _openai(1024, 16, 24, 51864),
    "medium": _openai(1024, 16, 24, 51865),
    "large-v2": _openai(1280, 20, 32, 51865),
    "large-v3": _openai(1280, 20, 32, 51866, n_mels=128),
    "large-v3-turbo": _openai(1280, 20, 32, 51866, n_mels=128, n_text_layer=4),
}
