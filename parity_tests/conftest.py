"""Fixtures for the parity suite, and the end-of-session table of the largest error observed per bound."""

from __future__ import annotations

import os
import secrets
import zlib

import pytest

from jax_whisper.config import WhisperConfig
from parity_tests.helpers import observed, random_torch_model

PRESETS = ("seed", "tiny")
_base = os.environ.get("PARITY_SEED", "20261125")
BASE_SEED = secrets.randbelow(2**30) if _base == "random" else int(_base)


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test: the base seed plus a hash of the test's id, so every test draws its own weights and
    inputs and a failure replays exactly. ``PARITY_SEED=<n>`` moves the base; ``PARITY_SEED=random`` draws one."""
    s = BASE_SEED + zlib.crc32(request.node.nodeid.encode()) % 1_000_000
    request.node.user_properties.append(("seed", s))
    return s


@pytest.fixture(params=PRESETS)
def cfg(request) -> WhisperConfig:
    return WhisperConfig.preset(request.param)


@pytest.fixture
def models(cfg, seed):
    """(cfg, torch model, flax model with the same weights), both in eval mode."""
    from jax_whisper.convert import torch_to_flax

    tm = random_torch_model(cfg, seed)
    return cfg, tm, torch_to_flax(tm.state_dict(), cfg)


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    tr.write_line(f"parity seeds: PARITY_SEED={BASE_SEED} (each test adds a hash of its id)")
    if not observed:
        return
    tr.section("largest errors observed (bound in brackets)")
    for what in sorted(observed):
        r = observed[what]
        rel = f"rel_l2 {r['rel_l2']:.2e} [{r['bound_rel_l2']:g}]" if r["bound_rel_l2"] else ""
        mab = f"max_abs {r['max_abs']:.2e} [{r['bound_max_abs']:g}]" if r["bound_max_abs"] else ""
        tr.write_line(f"{what:<48} {rel:<30} {mab:<30} n={r['n']}")
