"""Weight transfer: bit-exact round trips through every format, and mismatched state dicts rejected by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jax_whisper.config import WhisperConfig
from jax_whisper.convert import (
    detect_format,
    flax_to_torch,
    load_checkpoint,
    num_params,
    save_checkpoint,
    torch_to_flax,
)
from parity_tests.helpers import random_torch_model

ROOT = Path(__file__).resolve().parents[1]


def _assert_bit_exact(a: dict, b: dict, seed: int):
    assert a.keys() == b.keys(), f"key sets differ: {sorted(a.keys() ^ b.keys())[:5]} (seed {seed})"
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float32, k
        assert torch.equal(a[k], b[k]), f"{k} differs after the round trip (seed {seed})"


def test_round_trip_in_memory(cfg, seed):
    tm = random_torch_model(cfg, seed)
    sd = tm.state_dict()
    back = flax_to_torch(torch_to_flax(sd, cfg))
    _assert_bit_exact(back, sd, seed)
    tm.load_state_dict(back, strict=True)


def test_converted_weights_do_not_alias_the_source(seed):
    """Training the torch model in place after conversion must not change the Flax copy (and vice versa)."""
    cfg = WhisperConfig.preset("seed")
    tm = random_torch_model(cfg, seed)
    jm = torch_to_flax(tm.state_dict(), cfg)
    snapshot = {k: v.clone() for k, v in flax_to_torch(jm).items()}
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(1.0)
    _assert_bit_exact(flax_to_torch(jm), snapshot, seed)
    sd = flax_to_torch(jm)
    sd["decoder.ln.bias"].add_(1.0)
    _assert_bit_exact(flax_to_torch(jm), snapshot, seed)


def test_round_trip_through_files(tmp_path, seed):
    cfg = WhisperConfig.preset("seed")
    sd = random_torch_model(cfg, seed).state_dict()
    jm = torch_to_flax(sd, cfg)
    save_checkpoint(jm, cfg, tmp_path / "a", format="flax")
    assert detect_format(tmp_path / "a") == "flax"
    cfg_a, ma = load_checkpoint(tmp_path / "a")
    save_checkpoint(ma, cfg_a, tmp_path / "b.safetensors", format="torch")
    assert detect_format(tmp_path / "b.safetensors") == "torch"
    cfg_b, mb = load_checkpoint(tmp_path / "b.safetensors")
    assert cfg_a == cfg_b == cfg
    _assert_bit_exact(flax_to_torch(mb), sd, seed)
    # overwriting an existing checkpoint replaces it whole and leaves no temporary siblings
    save_checkpoint(mb, cfg, tmp_path / "a", format="flax")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.safetensors"]
    _assert_bit_exact(flax_to_torch(load_checkpoint(tmp_path / "a")[1]), sd, seed)


def test_fp16_state_dict_widens_exactly(seed):
    cfg = WhisperConfig.preset("tiny")
    sd = {k: v.half() for k, v in random_torch_model(cfg, seed).state_dict().items()}
    back = flax_to_torch(torch_to_flax(sd, cfg))
    for k in sd:
        assert torch.equal(back[k], sd[k].float()), k


def test_mismatched_state_dicts_name_the_tensor(seed):
    cfg = WhisperConfig.preset("seed")
    sd = dict(random_torch_model(cfg, seed).state_dict())
    missing = {k: v for k, v in sd.items() if k != "decoder.blocks.2.cross_attn.value.bias"}
    with pytest.raises(ValueError, match=r"missing tensor 'decoder.blocks.2.cross_attn.value.bias' "
                                         r"\(expected shape \(384,\)\)"):
        torch_to_flax(missing, cfg)
    extra = {**sd, "decoder.blocks.6.attn.key.weight": torch.zeros(384, 384)}
    with pytest.raises(ValueError, match=r"unexpected tensor 'decoder.blocks.6.attn.key.weight' "
                                         r"with shape \(384, 384\)"):
        torch_to_flax(extra, cfg)
    bad = {**sd, "encoder.conv1.weight": torch.zeros(384, 128, 3)}
    with pytest.raises(ValueError, match=r"tensor 'encoder.conv1.weight' has shape \(384, 128, 3\), "
                                         r"expected \(384, 80, 3\)"):
        torch_to_flax(bad, cfg)
    # a checkpoint of another size is rejected the same way (tiny weights into the seed config)
    with pytest.raises(ValueError, match=r"tensor 'decoder.token_embedding.weight' has shape \(51865, 384\)"):
        torch_to_flax(random_torch_model(WhisperConfig.preset("tiny"), seed).state_dict(), cfg)


def test_unknown_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="x.bin"):
        load_checkpoint(tmp_path / "x.bin")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_checkpoint(tmp_path / "nope")


def test_convert_cli_round_trip_is_bit_exact(tmp_path, seed):
    """scripts/convert.py: a seed checkpoint flax -> torch -> flax, bit for bit."""
    cfg = WhisperConfig.preset("seed")
    sd = random_torch_model(cfg, seed).state_dict()
    jm = torch_to_flax(sd, cfg)
    save_checkpoint(jm, cfg, tmp_path / "seed_flax", format="flax")
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "scripts" / "convert.py"), *map(str, a)],
                                    capture_output=True, text=True, cwd=tmp_path)
    r1 = run(tmp_path / "seed_flax", tmp_path / "seed.safetensors", "--to", "torch")
    assert r1.returncode == 0, r1.stderr
    assert f"{num_params(jm):,}" in r1.stdout and "n_audio_ctx" in r1.stdout
    r2 = run(tmp_path / "seed.safetensors", tmp_path / "seed_flax2", "--to", "flax")
    assert r2.returncode == 0, r2.stderr
    _assert_bit_exact(flax_to_torch(load_checkpoint(tmp_path / "seed_flax2")[1]), sd, seed)
    r3 = run(tmp_path / "missing", tmp_path / "o", "--to", "flax")
    assert r3.returncode != 0 and "missing" in r3.stderr
