"""Word error rate with Whisper's or GigaSpeech's text normalisation; shared by both trainers (no jax, no torch).

``scoring="whisper"`` normalises both sides with openai-whisper's ``EnglishTextNormalizer`` (what Whisper's papers
report), ``"gigaspeech"`` with GigaSpeech's official scoring rules, ``"none"`` only collapses whitespace; jiwer
counts the edits.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

SCORINGS = ("whisper", "gigaspeech", "none")


def scoring_for(dataset: str) -> str:
    """The scoring a dataset spec is reported with: GigaSpeech's official rules for GigaSpeech, else Whisper's."""
    return "gigaspeech" if dataset.startswith("gigaspeech") else "whisper"


@functools.cache
def _english_normalizer() -> Callable[[str], str]:
    """openai-whisper's ``EnglishTextNormalizer``, loaded without running ``whisper/__init__`` (which imports
    torch, ~5 s): its ``normalizers`` folder is imported as a package of its own.
    """
    if "whisper.normalizers" in sys.modules:
        return sys.modules["whisper.normalizers"].EnglishTextNormalizer()
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("openai-whisper is not installed; scoring='whisper' uses its EnglishTextNormalizer")
    folder = f"{next(iter(spec.submodule_search_locations))}/normalizers"
    name = "_jax_whisper_openai_normalizers"
    if name not in sys.modules:
        pkg_spec = importlib.util.spec_from_file_location(name, f"{folder}/__init__.py",
                                                          submodule_search_locations=[folder])
        module = importlib.util.module_from_spec(pkg_spec)
        sys.modules[name] = module  # before exec: its relative imports (.basic, .english) look it up
        try:
            pkg_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name].EnglishTextNormalizer()


def _normalizer(scoring: str) -> Callable[[str], str]:
    if scoring == "whisper":
        english = _english_normalizer()
        return lambda text: " ".join(english(text).split())
    if scoring == "gigaspeech":
        from jax_whisper.datasets import gigaspeech_score_normalize

        return gigaspeech_score_normalize
    if scoring == "none":
        return lambda text: " ".join(text.split())
    raise ValueError(f"unknown scoring {scoring!r}; choose from {SCORINGS}")


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str], *, scoring: str = "whisper"
                    ) -> dict[str, Any]:
    """Corpus WER: total word edits over total reference words, both sides normalised by ``scoring``.

    ``scoring``: ``"whisper"`` (openai-whisper's ``EnglishTextNormalizer``, what Whisper's papers report),
    ``"gigaspeech"`` (:func:`jax_whisper.datasets.gigaspeech_score_normalize`, GigaSpeech's official rules) or
    ``"none"`` (whitespace collapsed only). Returns ``wer`` (percent), ``errors``, ``words`` (reference words),
    ``substitutions``, ``deletions``, ``insertions`` and ``n`` (utterances).

    A reference that normalises to nothing (e.g. only fillers) still counts: its hypothesis words are
    insertions. When there are no reference words at all, ``wer = 100 * errors`` (division by
    ``max(words, 1)``, as jiwer 4 does): 0 for an all-empty match, never a division by zero or NaN.
    """
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    normalize = _normalizer(scoring)
    refs = [normalize(r or "") for r in references]
    hyps = [normalize(h or "") for h in hypotheses]
    words = sum(len(r.split()) for r in refs)
    subs = dels = ins = 0
    # jiwer 3 rejects empty strings (jiwer 4 accepts them): the edits against an empty side are plain counts.
    both = [(r, h) for r, h in zip(refs, hyps, strict=True) if r and h]
    for r, h in zip(refs, hyps, strict=True):
        if not r:
            ins += len(h.split())
        elif not h:
            dels += len(r.split())
    if both:
        import jiwer

        out = jiwer.process_words([r for r, _ in both], [h for _, h in both])
        subs += out.substitutions
        dels += out.deletions
        ins += out.insertions
    errors = subs + dels + ins
    return {
        "wer": 100.0 * errors / max(words, 1),
        "errors": errors,
        "words": words,
        "substitutions": subs,
        "deletions": dels,
        "insertions": ins,
        "n": len(refs),
    }


def by_group(rows: Iterable[dict], groups: dict[str, str]) -> dict[str, tuple[list[str], list[str]]]:
    """``{group: (references, hypotheses)}`` of transcribed ``rows`` (``{"id", "reference", "hypothesis"}``)
    whose id ``groups`` maps to a group; every group of ``groups`` appears, in sorted order, even if empty (so
    every process of a run scores the same groups)."""
    out: dict[str, tuple[list[str], list[str]]] = {g: ([], []) for g in sorted(set(groups.values()))}
    for r in rows:
        g = groups.get(r["id"])
        if g is not None:
            out[g][0].append(r["reference"])
            out[g][1].append(r["hypothesis"])
    return out


def group_wers(rows: Iterable[dict], groups: dict[str, str], scoring: str, wer=word_error_rate) -> dict[str, float]:
    """``{"wer_<group>": WER}`` of every group of :func:`by_group`; ``wer(refs, hyps, scoring=...)`` scores one
    (a multi-process run passes its collective version)."""
    return {f"wer_{g}": wer(refs, hyps, scoring=scoring)["wer"] for g, (refs, hyps) in by_group(rows, groups).items()}


__all__ = ["SCORINGS", "by_group", "group_wers", "scoring_for", "word_error_rate"]
