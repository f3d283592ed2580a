"""Greedy decoding against a cache-free reference loop, WER against a brute-force edit distance, and the
evaluation loop on hand-made pipeline batches. One tiny random model (seed vocabulary) serves all tests."""

from __future__ import annotations

import dataclasses
import functools
import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_whisper import decoding
from jax_whisper.audio import log_mel_spectrogram
from jax_whisper.config import WhisperConfig
from jax_whisper.evaluate import decode_texts, greedy_decode, transcribe_batches
from jax_whisper.model import Buffer, Whisper, sinusoids
from jax_whisper.scoring import word_error_rate
from jax_whisper.tokenizer import get_tokenizer

TOK = get_tokenizer("seed")
PROMPT = TOK.sot_sequence_including_notimestamps  # 4 tokens
SPECIALS = tuple(range(TOK.eot + 1, TOK.n_vocab))  # everything but eot
CFG = dataclasses.replace(
    WhisperConfig.preset("seed"), n_audio_ctx=8, n_audio_state=32, n_audio_head=2, n_audio_layer=2,
    n_text_ctx=16, n_text_state=32, n_text_head=2, n_text_layer=2, dropout=0.0, attn_dropout=0.0,
)
LIMIT = CFG.n_text_ctx - len(PROMPT) + 1  # most tokens the context allows: 13
FRAMES = 2 * CFG.n_audio_ctx  # 16
MAX_TOKENS = 8


def _draw(path, leaf, rng):
    """Whisper's own init scales (LayerNorm 1, embeddings 0.02 / 0.01, kernels 1/sqrt(fan_in)): with i.i.d.
    weights of one scale a random model repeats a single token, which would make the tests weak."""
    names = {str(getattr(k, "key", k)) for k in path}
    if "scale" in names:
        return jnp.ones(leaf.shape, leaf.dtype)
    std = (0.02 if names & {"bias", "token_embedding"} else 0.01 if "positional_embedding" in names
           else 1 / math.sqrt(math.prod(leaf.shape[:-1])))
    return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)


def random_model(cfg, seed):
    """A Whisper with random weights drawn in numpy, in eval mode.

    ``Whisper(cfg, rngs=...)`` draws eagerly with jax.random and compiles one kernel per parameter shape
    (~6 s on this machine); filling an abstract model takes well under a second.
    """
    abstract = nnx.eval_shape(lambda: Whisper(cfg, rngs=nnx.Rngs(0)))
    graphdef, params, buffers, rest = nnx.split(abstract, nnx.Param, Buffer, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(lambda path, leaf: _draw(path, leaf, rng), params)
    buffers = jax.tree.map(lambda s: sinusoids(*s.shape), buffers)  # the encoder's fixed positions
    key = jax.random.key(seed)
    rest = jax.tree.map(  # dropout's RNG streams: a key and a counter
        lambda s: key if jax.dtypes.issubdtype(s.dtype, jax.dtypes.prng_key) else jnp.zeros(s.shape, s.dtype), rest
    )
    model = nnx.merge(graphdef, params, buffers, rest)
    model.eval()
    return model


@pytest.fixture(scope="module")
def model():
    return random_model(CFG, 1)  # seeds 0 and 2 happen to have no usable stop token (see below)


@pytest.fixture(scope="module")
def mel():
    return np.random.default_rng(0).normal(size=(3, CFG.n_mels, FRAMES)).astype(np.float32)


@pytest.fixture(scope="module")
def raw(model, mel):
    """Greedy tokens of the batch, stopped by max_tokens (the random model does not emit eot)."""
    out = np.asarray(greedy_decode(model, mel, PROMPT, eot=TOK.eot, max_tokens=MAX_TOKENS, suppress=SPECIALS))
    assert out.shape == (3, MAX_TOKENS) and out.dtype == np.int32 and not (out == TOK.eot).any()
    return out


def reference_greedy(model, mel, prompt, *, eot, max_tokens, suppress):
    """Plain loop, no cache: the whole sequence through ``model(mel, tokens)`` for every new token.

    Tokens are right-padded to the full text context so one compiled forward serves every step; the decoder is
    causal, so the padding never changes the logits read at the last real position.
    """
    n_batch, n_ctx = mel.shape[0], CFG.n_text_ctx
    tokens = np.full((n_batch, n_ctx), eot, np.int32)
    tokens[:, : len(prompt)] = prompt
    length = len(prompt)
    out = np.full((n_batch, max_tokens), eot, np.int32)
    done = np.zeros(n_batch, bool)
    for i in range(max_tokens):
        if done.all() or length > n_ctx:
            break
        logits = np.array(_forward(model, jnp.asarray(mel), jnp.asarray(tokens))[:, length - 1])
        logits[:, list(suppress)] = -np.inf
        token = np.where(done, eot, logits.argmax(-1))
        out[:, i] = token
        done |= token == eot
        if length < n_ctx:
            tokens[:, length] = token
        length += 1
    return out


_forward = nnx.jit(lambda model, mel, tokens: model(mel, tokens))


# ---- greedy_decode ----------------------------------------------------------------------------------------


def test_greedy_matches_full_recompute(model, mel, raw):
    expected = reference_greedy(model, mel, PROMPT, eot=TOK.eot, max_tokens=MAX_TOKENS, suppress=SPECIALS)
    np.testing.assert_array_equal(raw, expected)  # and max_tokens (8 < the context's 13) ended every row


def test_decoding_after_an_update_sees_the_new_weights(mel, raw):
    """An in-place update (what the optimizer does between validations) must reach decoding: the reused
    Prepared once kept the first validation's embedding and encoder stack, mixing old and new weights."""
    model = random_model(CFG, 1)
    first = decoding.prepare(model)
    np.testing.assert_array_equal(
        np.asarray(greedy_decode(model, mel, PROMPT, eot=TOK.eot, max_tokens=MAX_TOKENS, suppress=SPECIALS)), raw)
    nnx.update(model, nnx.state(random_model(CFG, 3), nnx.Param))
    again = decoding.prepare(model)
    assert again is not first
    np.testing.assert_array_equal(np.asarray(again.unembed), np.asarray(decoding.prepare(random_model(CFG, 3)).unembed))
    fresh = random_model(CFG, 3)
    expected = np.asarray(greedy_decode(fresh, mel, PROMPT, eot=TOK.eot, max_tokens=MAX_TOKENS, suppress=SPECIALS))
    got = np.asarray(greedy_decode(model, mel, PROMPT, eot=TOK.eot, max_tokens=MAX_TOKENS, suppress=SPECIALS))
    assert not np.array_equal(expected, raw)  # the new weights decode differently, so the check below has teeth
    np.testing.assert_array_equal(got, expected)
    assert decoding.prepare(model) is again  # unchanged weights: reused


def test_suppress_padding_context_limit_early_stop_one_compilation(model, mel, raw):
    wanted = int(raw[0, 0])
    suppress = (wanted, *SPECIALS)  # a token the model wants: suppressing it must change the output
    assert list(suppress) == sorted(suppress)  # the order greedy_decode passes on, so its calls share a trace
    free = reference_greedy(model, mel, PROMPT, eot=TOK.eot, max_tokens=20, suppress=suppress)
    assert free[0, 0] != wanted and not (free[:, :LIMIT] == TOK.eot).any()
    # Use a token the model emits as "eot": two rows meet it at different steps, the third never does.
    first = {t: {r: int(np.flatnonzero(free[r] == t)[0]) for r in range(3) if (free[r] == t).any()}
             for t in np.unique(free[:, :LIMIT])}
    stop, where = next(((int(t), f) for t, f in first.items()
                        if len(f) == 2 and len(set(f.values())) == 2 and max(f.values()) < LIMIT - 1), (None, None))
    assert stop is not None, f"no usable stop token in {free}"  # a property of the random model, not the code
    (never,) = set(range(3)) - set(where)

    traces = decoding._TRACE_COUNT["search"]
    tokens, steps = decoding.greedy_tokens(model, decoding.embed_audio(model, mel), PROMPT, eot=stop, max_tokens=20,
                                           suppress=suppress)
    assert decoding._TRACE_COUNT["search"] == traces + 1  # a signature no other test uses
    tokens = first_run = np.asarray(tokens)
    np.testing.assert_array_equal(tokens, reference_greedy(model, mel, PROMPT, eot=stop, max_tokens=20,
                                                           suppress=suppress))
    free = np.where(free == TOK.eot, stop, free)  # the context-limit padding, now with the new eot
    np.testing.assert_array_equal(tokens, _cut(free, stop))  # finished rows: stop, then only stop
    assert not np.isin(tokens, suppress).any()
    # The row that never stops ran until the context (16 = 4 prompt + 12 fed back) was full: 13 tokens.
    assert int(steps) == LIMIT and (tokens[never, :LIMIT] != stop).all() and (tokens[never, LIMIT:] == stop).all()

    # Same shapes, only finishing rows: no new trace, and the loop ends right after the last row finishes.
    rows = sorted(where, key=where.get)
    rows = [rows[0], rows[1], rows[0]]
    tokens, steps = decoding.greedy_tokens(model, decoding.embed_audio(model, mel[rows]), PROMPT, eot=stop,
                                           max_tokens=20, suppress=suppress)
    np.testing.assert_array_equal(np.asarray(tokens), _cut(free[rows], stop))
    assert int(steps) == where[rows[1]] + 1 < LIMIT

    # Other weights, same structure; suppress in another order; prompt as a list: still the same compilation.
    other = random_model(CFG, 2)
    out = greedy_decode(other, mel, list(PROMPT), eot=stop, max_tokens=20, suppress=suppress[::-1])
    assert out.shape == (3, 20) and not np.array_equal(np.asarray(out), first_run)
    assert decoding._TRACE_COUNT["search"] == traces + 1


def test_cache_holds_only_the_slots_the_search_needs(model, mel):
    """The decoding cache has prompt width + max_tokens slots, not the whole text context; with the prompt filling
    its padded width the last token fed back lands in the cache's last used slot, and the output is still the
    cache-free loop's."""
    prompt = [*PROMPT, *np.random.default_rng(3).integers(0, TOK.eot, 8 - len(PROMPT)).tolist()]  # width 8, full
    assert decoding._cache_len(8, 4, CFG.n_text_ctx) == 12 < CFG.n_text_ctx
    tokens, steps = decoding.greedy_tokens(model, decoding.embed_audio(model, mel), prompt, eot=TOK.eot,
                                           max_tokens=4, suppress=SPECIALS)
    np.testing.assert_array_equal(np.asarray(tokens), reference_greedy(model, mel, prompt, eot=TOK.eot, max_tokens=4,
                                                                       suppress=SPECIALS))
    assert int(steps) == 4


def _cut(rows, stop):
    """Rows ending at their first ``stop`` (kept), then padded with ``stop``."""
    out = np.array(rows)
    for row in out:
        hits = np.flatnonzero(row == stop)
        if hits.size:
            row[hits[0]:] = stop
    return out


def test_greedy_decode_rejects_bad_arguments(model, mel):
    with pytest.raises(ValueError, match="suppress contains eot"):
        greedy_decode(model, mel, PROMPT, eot=TOK.eot, max_tokens=4, suppress=(TOK.eot,))
    with pytest.raises(ValueError, match="prompt must hold 1..16"):
        greedy_decode(model, mel, (TOK.sot,) * 17, eot=TOK.eot, max_tokens=4)
    with pytest.raises(ValueError, match="max_tokens"):
        greedy_decode(model, mel, PROMPT, eot=TOK.eot, max_tokens=0)
    training = random_model(dataclasses.replace(CFG, dropout=0.1), 0)
    training.train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        greedy_decode(training, mel, PROMPT, eot=TOK.eot, max_tokens=4)


# ---- decode_texts -----------------------------------------------------------------------------------------


def test_decode_texts_cuts_at_eot_and_drops_specials():
    eot = TOK.eot
    rows = [
        TOK.encode(" hello world") + [eot] + TOK.encode(" junk"),
        [TOK.sot, *TOK.encode(" hi"), TOK.no_timestamps, *TOK.encode(" there")],
        [eot] + TOK.encode(" never"),
    ]
    width = max(map(len, rows))
    tokens = np.array([r + [eot] * (width - len(r)) for r in rows], np.int32)
    assert decode_texts(TOK, tokens) == ["hello world", "hi there", ""]


# ---- word_error_rate --------------------------------------------------------------------------------------


def test_wer_hand_checked():
    one_sub = word_error_rate(["the cat sat down"], ["the cat sat up"], scoring="none")
    assert one_sub == {"wer": 25.0, "errors": 1, "words": 4, "substitutions": 1, "deletions": 0,
                       "insertions": 0, "n": 1}
    assert word_error_rate(["Hello, World!"], ["hello world"])["wer"] == 0.0  # default: whisper normaliser
    assert word_error_rate(["Hello, World!"], ["hello world"], scoring="none")["substitutions"] == 2
    # Whisper's normaliser also spells out contractions and numbers the same way on both sides.
    assert word_error_rate(["It's twenty dollars."], ["it is $20"])["wer"] == 0.0
    two = word_error_rate(["a b c", "d e"], ["a c", "d e f g"], scoring="none")
    assert (two["words"], two["deletions"], two["insertions"], two["n"]) == (5, 1, 2, 2)
    assert two["wer"] == pytest.approx(60.0)


def test_wer_gigaspeech_rules():
    ref = "UH I THINK <COMMA> UM IT'S WELL-KNOWN <PERIOD> <UNK>"
    hyp = "i think, uh, it's well known."
    assert word_error_rate([ref], [hyp], scoring="gigaspeech")["wer"] == 0.0
    res = word_error_rate([ref], ["i think it's known <SIL>"], scoring="gigaspeech")
    assert (res["words"], res["deletions"], res["errors"]) == (5, 1, 1)  # I THINK IT'S WELL KNOWN
    with pytest.raises(ValueError, match="unknown scoring"):
        word_error_rate([ref], [hyp], scoring="kaldi")


def test_wer_empty_references_and_length_mismatch():
    res = word_error_rate(["Um, uh.", "a b"], ["hello there", "a b"])  # the first reference normalises to ''
    assert (res["words"], res["insertions"], res["errors"], res["wer"]) == (2, 2, 2, 100.0)
    assert word_error_rate([""], [""])["wer"] == 0.0
    assert word_error_rate(["", ""], ["x", "y z"], scoring="none")["wer"] == 300.0  # 3 insertions / max(0, 1)
    assert word_error_rate(["a b"], [""], scoring="none")["deletions"] == 2
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


def _levenshtein(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_wer_counts_equal_brute_force_edit_distance():
    rng = random.Random(0)
    refs, hyps = [], []
    for _ in range(50):
        ref = [rng.choice("abcd") for _ in range(rng.randint(0, 7))]  # 4 words: plenty of partial matches
        hyp = [rng.choice("abcd") for _ in range(rng.randint(0, 7))]
        res = word_error_rate([" ".join(ref)], [" ".join(hyp)], scoring="none")
        assert res["errors"] == _levenshtein(ref, hyp), (ref, hyp, res)
        assert res["words"] == len(ref)
        # Equal-cost alignments may split S / D / I differently, but D - I is fixed by the lengths.
        assert res["deletions"] - res["insertions"] == len(ref) - len(hyp)
        assert res["errors"] == res["substitutions"] + res["deletions"] + res["insertions"]
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
    total = word_error_rate(refs, hyps, scoring="none")
    errors = sum(_levenshtein(r.split(), h.split()) for r, h in zip(refs, hyps, strict=True))
    words = sum(len(r.split()) for r in refs)
    assert (total["errors"], total["words"], total["n"]) == (errors, words, 50)
    assert total["wer"] == pytest.approx(100 * errors / words)


# ---- transcribe_batches -----------------------------------------------------------------------------------


def _batch(rng, samples, ids, texts, valid):
    audio = 0.1 * rng.standard_normal((len(ids), samples)).astype(np.float32)
    return {"audio": audio, "valid": np.array(valid), "text": texts, "id": ids,
            "tokens": np.zeros((len(ids), 4), np.int32)}  # other keys are ignored


_log_mel = jax.jit(functools.partial(log_mel_spectrogram, n_mels=CFG.n_mels))  # eager would compile every op


def test_transcribe_batches(model):
    rng = np.random.default_rng(1)
    batches = [
        _batch(rng, FRAMES * 160, ["a", "b", ""], ["first", "second", ""], [True, True, False]),
        _batch(rng, FRAMES * 160, ["c", "d", "e"], ["third", "fourth", "fifth"], [True, True, True]),
        # 17 frames, odd: the last is dropped (17 or a padded 18 would not fit the 16-frame window).
        # Only the first row is real.
        _batch(rng, 17 * 160 + 50, ["f", "", ""], ["sixth", "", ""], [True, False, False]),
    ]
    calls = []

    def log_mel(audio):
        calls.append(audio.shape)
        return _log_mel(audio)

    results = transcribe_batches(model, CFG, TOK, iter(batches), max_tokens=MAX_TOKENS, log_mel=log_mel)
    assert calls == [(3, 2560), (3, 2560), (3, 2770)]
    assert [r["id"] for r in results] == list("abcdef")
    assert [r["reference"] for r in results] == ["first", "second", "third", "fourth", "fifth", "sixth"]

    expected = []
    for b in batches:
        mel = _log_mel(b["audio"])
        mel = mel[..., : mel.shape[-1] // 2 * 2]
        tokens = greedy_decode(model, mel, PROMPT, eot=TOK.eot, max_tokens=MAX_TOKENS, suppress=SPECIALS)
        expected += [h for h, v in zip(decode_texts(TOK, tokens), b["valid"], strict=True) if v]
    assert [r["hypothesis"] for r in results] == expected
    assert all(expected)  # the random model does say something: the comparison is not between empty strings

    with pytest.raises(ValueError, match="3 audio rows but valid"):
        transcribe_batches(model, CFG, TOK, [{**batches[0], "id": ["a", "b"]}])
