"""The embedded default training corpus: generated English sentences spoken by eSpeak NG.

Three modules: :mod:`~jax_whisper.synthetic.grammar` (the sentence grammar; its word lists in
:mod:`~jax_whisper.synthetic.words`), :mod:`~jax_whisper.synthetic.espeak` (the eSpeak NG binding) and
:mod:`~jax_whisper.synthetic.corpus` (voices and the parallel, atomic corpus builder). This package re-exports their
public names. It imports neither jax nor torch.
"""

from jax_whisper.synthetic.corpus import (
    CORPUS_DEFAULTS,
    FORMAT_VERSION,
    HELDOUT_VOICES,
    SPLITS,
    TRAIN_VOICES,
    build_corpus,
    corpus_info,
    corpus_key,
    default_cache_dir,
    ensure_corpus,
    is_complete,
    load_manifest,
    manifest_paths,
)
from jax_whisper.synthetic.espeak import SAMPLE_RATE, ESpeak
from jax_whisper.synthetic.grammar import (
    SentenceGenerator,
    generate_sentences,
    normalize_text,
    number_words,
    vocabulary,
)

__all__ = [
    "ESpeak",
    "SentenceGenerator",
    "build_corpus",
    "ensure_corpus",
    "corpus_key",
    "corpus_info",
    "default_cache_dir",
    "generate_sentences",
    "is_complete",
    "load_manifest",
    "manifest_paths",
    "normalize_text",
    "number_words",
    "vocabulary",
    "TRAIN_VOICES",
    "HELDOUT_VOICES",
    "SAMPLE_RATE",
    "FORMAT_VERSION",
    "CORPUS_DEFAULTS",
    "SPLITS",
]
