"""The PyTorch reference trainer end to end on a tiny model, and its greedy decoder against a cache-free loop."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jax_whisper.config import TrainConfig, WhisperConfig
from jax_whisper.tokenizer import get_tokenizer
from torch_reference.decoding import decode_texts, greedy_decode
from torch_reference.model import Whisper
from torch_reference.train import CONFIG_KEY, MODEL_FILE, TRAINER_FILE, train

ROOT = Path(__file__).resolve().parents[1]
TINY = "n_audio_head=2,n_audio_state=32,n_audio_layer=1,n_text_head=2,n_text_state=32,n_text_layer=1"  # heads first (*)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine two threads wait on each other (~9x slower eager steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus")


def tiny_config(corpus_dir, out, **kw) -> TrainConfig:
    """The seed preset shrunk to 32-dim, 1+1 layers (dropout 0.1 kept: resume must restore the dropout RNG).

    (*) ``TrainConfig.model_config`` applies the overrides one by one, each result validated.
    """
    base = dict(preset="seed", model=TINY, cache_dir=str(corpus_dir), n_train=24, n_val=4, n_test=4, buckets=2,
                batch_size=4, max_steps=6, warmup_steps=2, eval_every=3, eval_batch_size=4, log_every=2, dropout=0.1,
                ctc_only_steps=2,
                checkpoint_every=2, keep_checkpoints=2, output_dir=str(out), progress=False)
    return TrainConfig(**{**base, **kw})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_train_end_to_end_and_resume(corpus_dir, tmp_path):
    tc = tiny_config(corpus_dir, tmp_path / "run")
    lines: list[str] = []
    results = train(tc, log=lines.append)
    out = Path(tc.output_dir)

    assert results["status"] == "completed" and results["steps"] == 6
    saved = json.loads((out / "results.json").read_text())
    for key in ("test_wer", "val_wer", "steps", "train_minutes", "best_step", "history", "test_loss", "test_ctc_wer"):
        assert key in saved, key
    assert saved["test_wer"] == results["test_wer"] and saved["steps"] == 6
    assert [h["step"] for h in saved["history"]] == [3, 6]  # eval_every 3 and the last step (7 steps/epoch)
    assert re.fullmatch(r"test WER: \d+\.\d%", lines[-1]), lines[-1]

    # checkpoints: the last two periodic ones and the best, each model.safetensors + trainer.pt, no temp leftovers
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir())
    assert steps[-1] == 6 and len(steps) == 2, steps
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    for d in [out / "checkpoints" / str(s) for s in steps] + [out / "best"]:
        assert (d / MODEL_FILE).is_file() and (d / TRAINER_FILE).is_file(), d
    cfg = tc.model_config()
    from safetensors import safe_open

    with safe_open(str(out / "checkpoints" / "6" / MODEL_FILE), framework="pt") as f:
        keys = set(f.keys())
        assert WhisperConfig.from_json(f.metadata()[CONFIG_KEY]) == cfg
    assert keys == set(Whisper(cfg).state_dict())  # exactly openai-whisper's names
    assert {"encoder.conv1.weight", "encoder.blocks.0.attn.query.weight", "decoder.token_embedding.weight"} <= keys
    from jax_whisper.convert import load_checkpoint  # the "torch" format jax_whisper reads

    loaded_cfg, jm = load_checkpoint(out / "best" / MODEL_FILE)
    assert loaded_cfg == cfg
    np.testing.assert_array_equal(np.asarray(jm.decoder.token_embedding.embedding[...]),
                                  _weights(out / "best" / MODEL_FILE)["decoder.token_embedding.weight"].numpy())
    trainer = torch.load(out / "checkpoints" / "6" / TRAINER_FILE, weights_only=True)
    assert trainer["step"] == 6 and trainer["ctc"] is not None and trainer["data_state"]

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "validation", "test"}
    assert all(np.isfinite(r["loss"]) for r in records if r["split"] == "train")
    assert (out / "tensorboard").is_dir()

    # interrupted at step 3, then --resume: the same weights at step 6, bit for bit (data order, dropout RNG,
    # optimizer and scheduler all restored)
    tc2 = tiny_config(corpus_dir, tmp_path / "resumed")
    lines2: list[str] = []
    first = train(tc2, log=lines2.append, stop_after=3)
    assert first["status"] == "interrupted" and first["steps"] == 3 and "test_wer" not in first
    assert not any(line.startswith("test WER") for line in lines2)
    second = train(dataclasses.replace(tc2, resume=True), log=lines2.append)
    assert second["status"] == "completed" and any("resumed from" in line for line in lines2)
    a = _weights(out / "checkpoints" / "6" / MODEL_FILE)
    b = _weights(Path(tc2.output_dir) / "checkpoints" / "6" / MODEL_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"
    assert second["test_wer"] == results["test_wer"]
    assert [h["step"] for h in second["history"]] == [h["step"] for h in results["history"]]


def test_torch_reference_never_imports_jax(tmp_path):
    """Not on import, nor when a run starts from a checkpoint of each format the torch trainer reads."""
    from jax_whisper.convert import save_checkpoint
    from jax_whisper.model import Whisper as FlaxWhisper

    cfg = TrainConfig(preset="seed", model=TINY).model_config()
    from flax import nnx

    jm = FlaxWhisper(cfg, rngs=nnx.Rngs(0))
    paths = [save_checkpoint(jm, cfg, tmp_path / name, format=fmt) for name, fmt in
             (("a.pt", "openai"), ("b.safetensors", "torch"), ("c-hf", "hf"), ("d-ct2", "ctranslate2"))]
    code = ("import sys; import torch_reference.train, torch_reference.decoding, torch_reference.model; "
            "import torch_reference.audio; "
            f"[torch_reference.train.TorchBackend().load_initial(p) for p in {[str(p) for p in paths]!r}]; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_torch_fine_tuning_from_a_checkpoint(corpus_dir, tmp_path):
    """--init-from an OpenAI .pt with a frozen encoder: the checkpoint's dims and weights, the step-0 test WER in
    results.json, the encoder unchanged after the run; a Flax checkpoint is refused in one line (jax would be
    needed to read it)."""
    from flax import nnx

    from jax_whisper.config import RunConfigError
    from jax_whisper.convert import save_checkpoint
    from jax_whisper.model import Whisper as FlaxWhisper
    from torch_reference.train import TorchBackend

    cfg = TrainConfig(preset="seed", model=TINY, dropout=0.0).model_config()
    jm = FlaxWhisper(cfg, rngs=nnx.Rngs(3))
    pt = save_checkpoint(jm, cfg, tmp_path / "init.pt", format="openai")
    tc = tiny_config(corpus_dir, tmp_path / "run", preset=None, model="", init_from=str(pt), freeze_encoder=True,
                     dropout=0.0, ctc_only_steps=0, ctc_weight=0.0, max_steps=4, eval_every=2)
    lines: list[str] = []
    results = train(tc, log=lines.append)
    assert results["status"] == "completed" and "initial_test_wer" in results and "test_wer" in results
    assert [h["step"] for h in results["history"]] == [0, 2, 4]
    assert any("(encoder frozen)" in line for line in lines), lines
    before = torch.load(pt, weights_only=True)["model_state_dict"]
    after = _weights(tmp_path / "run" / "checkpoints" / "4" / MODEL_FILE)
    enc = [k for k in before if k.startswith("encoder.") and k in after]
    assert enc and all(torch.equal(before[k].float(), after[k]) for k in enc)
    assert any(not torch.equal(before[k].float(), after[k]) for k in before if k.startswith("decoder."))
    save_checkpoint(jm, cfg, tmp_path / "flax", format="flax")
    with pytest.raises(RunConfigError, match=r"a Flax \(orbax\) checkpoint.*--to torch"):
        TorchBackend().load_initial(str(tmp_path / "flax"))


# ---- greedy decoding ----------------------------------------------------------------------------------------

TOK = get_tokenizer("seed")
PROMPT = TOK.sot_sequence_including_notimestamps  # 4 tokens
SPECIALS = tuple(range(TOK.eot + 1, TOK.n_vocab))
CFG = dataclasses.replace(
    WhisperConfig.preset("seed"), n_audio_ctx=8, n_audio_state=32, n_audio_head=2, n_audio_layer=2,
    n_text_ctx=16, n_text_state=32, n_text_head=2, n_text_layer=2, dropout=0.0, attn_dropout=0.0,
)
LIMIT = CFG.n_text_ctx - len(PROMPT) + 1  # 13


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    m = Whisper(CFG)
    with torch.no_grad():
        for name, p in m.named_parameters():  # biases away from zero: a livelier random model
            if name.endswith(".bias"):
                p.normal_(0.0, 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def mel():
    return torch.from_numpy(np.random.default_rng(0).normal(size=(3, CFG.n_mels, 2 * CFG.n_audio_ctx))
                            .astype(np.float32))


@torch.no_grad()
def reference_greedy(model, mel, prompt, *, eot, max_tokens, suppress):
    """No cache: the whole sequence through ``model(mel, tokens)`` for every new token."""
    n_batch = mel.shape[0]
    tokens = torch.tensor(prompt).repeat(n_batch, 1)
    out = torch.full((n_batch, max_tokens), eot, dtype=torch.long)
    done = torch.zeros(n_batch, dtype=torch.bool)
    for i in range(max_tokens):
        if done.all() or tokens.shape[1] > CFG.n_text_ctx:
            break
        logits = model(mel, tokens)[:, -1]
        logits[:, list(suppress)] = -torch.inf
        token = torch.where(done, eot, logits.argmax(-1))
        out[:, i] = token
        done |= token == eot
        tokens = torch.cat([tokens, token[:, None]], dim=1)
    return out


def test_greedy_matches_full_recompute(model, mel):
    got = greedy_decode(model, mel, PROMPT, eot=TOK.eot, max_tokens=20, suppress=SPECIALS)
    want = reference_greedy(model, mel, PROMPT, eot=TOK.eot, max_tokens=20, suppress=SPECIALS)
    assert got.shape == (3, 20)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (got[:, LIMIT:] == TOK.eot).all()  # the context (16 = 4 prompt + 12 fed back) allows 13 tokens
    assert len(set(got[:, :LIMIT].flatten().tolist())) > 3, "random model too degenerate for a useful test"

    # A token the model emits, used as eot: rows stop at different steps, then pad with it.
    first = {}
    for r in range(3):
        for i, t in enumerate(got[r, :LIMIT].tolist()):
            first.setdefault(t, {}).setdefault(r, i)
    stop = next((t for t, f in first.items() if len(set(f.values())) >= 2 and max(f.values()) < LIMIT - 1), None)
    assert stop is not None, got
    out = greedy_decode(model, mel, PROMPT, eot=stop, max_tokens=20, suppress=SPECIALS)
    torch.testing.assert_close(out, reference_greedy(model, mel, PROMPT, eot=stop, max_tokens=20, suppress=SPECIALS),
                               rtol=0, atol=0)
    for r, i in first[stop].items():
        assert (out[r, i:] == stop).all() and (out[r, :i] != stop).all()

    # suppressing a token the model wants changes the output and never emits it
    wanted = int(got[0, 0])
    out = greedy_decode(model, mel, PROMPT, eot=TOK.eot, max_tokens=8, suppress=(wanted, *SPECIALS))
    torch.testing.assert_close(out, reference_greedy(model, mel, PROMPT, eot=TOK.eot, max_tokens=8,
                                                     suppress=(wanted, *SPECIALS)), rtol=0, atol=0)
    assert not (out == wanted).any()


def test_greedy_decode_checks_and_texts(model, mel):
    with pytest.raises(ValueError, match="suppress contains eot"):
        greedy_decode(model, mel, PROMPT, eot=TOK.eot, max_tokens=4, suppress=(TOK.eot,))
    with pytest.raises(ValueError, match="prompt must hold"):
        greedy_decode(model, mel, (TOK.sot,) * 17, eot=TOK.eot, max_tokens=4)
    with pytest.raises(ValueError, match="max_tokens"):
        greedy_decode(model, mel, PROMPT, eot=TOK.eot, max_tokens=0)
    training = Whisper(dataclasses.replace(CFG, dropout=0.1)).train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        greedy_decode(training, mel, PROMPT, eot=TOK.eot, max_tokens=4)
    eot = TOK.eot
    rows = [TOK.encode(" hello world") + [eot] + TOK.encode(" junk"),
            [TOK.sot, *TOK.encode(" hi"), TOK.no_timestamps, *TOK.encode(" there")]]
    width = max(map(len, rows))
    tokens = torch.tensor([r + [eot] * (width - len(r)) for r in rows])
    assert decode_texts(TOK, tokens) == ["hello world", "hi there"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(corpus_dir, tmp_path, monkeypatch):
    import torch_reference.train as ttrain

    real_step, calls = ttrain.train_step, []

    def failing_step(*args, **kwargs):
        calls.append(1)
        m = real_step(*args, **kwargs)
        return {**m, "loss": float("nan")} if len(calls) == 3 else m

    monkeypatch.setattr(ttrain, "train_step", failing_step)
    tc = tiny_config(corpus_dir, tmp_path / "run", eval_every=0)
    with pytest.raises(FloatingPointError, match="diverged at step 3"):
        train(tc, log=lambda line: None)
    out = Path(tc.output_dir)
    assert json.loads((out / "results.json").read_text())["status"] == "diverged"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["2"]
