"""The embedded default training corpus: generated English sentences spoken by eSpeak NG.

Three parts:

* :class:`SentenceGenerator` -- a small English grammar (statements, questions, commands, subordinate
  and relative clauses, numbers, times) producing lower-case transcripts with an exact word count.
* :class:`ESpeak` -- the eSpeak NG library shipped in the ``espeakng_loader`` wheel, driven through ctypes
  in synchronous mode; ``synthesize`` returns float32 audio at 16 kHz.
* :func:`build_corpus` / :func:`ensure_corpus` -- render train / validation / test splits to
  ``<corpus>/<split>/<id>.flac`` plus ``<corpus>/<split>.jsonl`` manifests and ``<corpus>/corpus.json``.

Manifest rows hold ``"audio"`` as a path **relative to the corpus directory** (the directory that holds
the ``.jsonl`` files), so a corpus can be moved or renamed into place atomically; :func:`load_manifest`
resolves them to absolute paths. Test and validation sentences never occur in train, and both include
held-out voices that training never hears. This module imports neither jax nor torch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import functools
import hashlib
import inspect
import json
import logging
import multiprocessing
import os
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jax_whisper import synthetic_words as W

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")

# Training hears many voices: an unseen voice is recognised far better by a model that heard 70 than by one that
# heard 9 (the earlier default's 9 come first). Each of eSpeak's English accents (US, New York, GB,
# RP, Caribbean, Scottish, Lancastrian, West Midlands) is paired with a share of its voice variants. The held-out
# voices use variants (f1, m6) that no training voice uses, so evaluation keeps two truly unheard voices.
_ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
_VARIANTS = (  # all of eSpeak NG's variants but f1/m6 (held out) and the whispered, croaking and robotic ones
    "m1", "m2", "m3", "m4", "m5", "m7", "m8", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3", "klatt4",
    "klatt5", "klatt6", "Alex", "Andy", "Annie", "adam", "anika", "aunty", "benjamin", "boris", "caleb", "david",
    "ed", "edward", "grandma", "grandpa", "ian", "iven", "john", "linda", "max", "michel", "norbert", "paul",
    "quincy", "rob", "robert", "steph", "travis", "victor", "zac", "Gene", "Lee", "Mike", "Michael", "Reed",
    "Storm", "Jacky", "shelby", "belinda", "Alicia", "Andrea", "Denis", "announcer", "gustave", "pablo", "sandro",
    "marcelo", "mike2",
)
_FIRST_VOICES = (
    "en-us+m3", "en-us+f3", "en+m1", "en+f4", "en-gb-x-rp+m5", "en-029+f2", "en-gb-scotland+m2", "en-us+klatt4",
    "en-us+f5",
)
TRAIN_VOICES = _FIRST_VOICES + tuple(
    v for v in (f"{_ACCENTS[i % len(_ACCENTS)]}+{name}" for i, name in enumerate(_VARIANTS))
    if v not in _FIRST_VOICES
)
HELDOUT_VOICES = ("en-gb-x-rp+f1", "en-us+m6")


# ==================================================================================================
# Sentence generator
# ==================================================================================================


def _noun(spec: str) -> tuple[str, str]:
    """``"knife/knives"`` -> (singular, plural); a regular plural is derived."""
    if "/" in spec:
        sg, pl = spec.split("/")
        return sg, pl
    if spec.endswith(("s", "x", "ch", "sh", "z")):
        return spec, spec + "es"
    if spec.endswith("y") and spec[-2] not in "aeiou":
        return spec, spec[:-1] + "ies"
    return spec, spec + "s"


_AN_EXCEPTIONS = {"hour", "honest"}  # vowel sound behind a consonant letter
_A_EXCEPTIONS = {"one", "uniform", "university", "useful", "usual"}  # "yoo" sound behind a vowel letter


def _article(word: str) -> str:
    if word in _AN_EXCEPTIONS:
        return "an"
    if word in _A_EXCEPTIONS:
        return "a"
    return "an" if word[0] in "aeiou" else "a"


def number_words(n: int) -> list[str]:
    """Spell 1..999 as words: 342 -> ['three', 'hundred', 'forty', 'two']."""
    if not 1 <= n <= 999:
        raise ValueError(f"number out of range: {n}")
    out: list[str] = []
    if n >= 100:
        out += [W.ONES[n // 100 - 1], "hundred"]
        n %= 100
    if n >= 20:
        out.append(W.TENS[n // 10 - 2])
        n %= 10
        if n:
            out.append(W.ONES[n - 1])
    elif n >= 10:
        out.append(W.TEENS[n - 10])
    elif n:
        out.append(W.ONES[n - 1])
    return out


@dataclass(frozen=True)
class _NounClass:
    nouns: tuple[tuple[str, str], ...]  # (singular, plural)
    adjectives: tuple[tuple[str, ...], ...]  # adjective kinds, in English adjective order
    predicates: tuple[str, ...]  # adjectives that read well after "is"
    countable: bool = True


class _NP(NamedTuple):
    words: list[str]
    person: int
    plural: bool
    kind: str  # noun class, or "name" / "pronoun"


_BEINGS = ("person", "animal", "name", "pronoun")
_PERSON_ADJ = (
    "happy",
    "sad",
    "tired",
    "hungry",
    "angry",
    "brave",
    "kind",
    "friendly",
    "clever",
    "lazy",
    "busy",
    "strong",
    "weak",
    "sick",
    "nervous",
    "proud",
    "calm",
    "sleepy",
    "thirsty",
    "polite",
    "rude",
    "honest",
    "gentle",
)
_ANIMAL_ADJ = (
    "happy",
    "sad",
    "tired",
    "hungry",
    "angry",
    "brave",
    "friendly",
    "clever",
    "lazy",
    "sleepy",
    "thirsty",
    "calm",
    "gentle",
    "wet",
    "dirty",
)
_FOOD_STATE = ("hot", "cold", "warm", "dry", "soft", "hard", "expensive", "cheap")
_PLACE_STATE = (
    "quiet",
    "loud",
    "clean",
    "dirty",
    "empty",
    "dark",
    "bright",
    "cold",
    "warm",
    "busy",
    "crowded",
)
_VEHICLE_STATE = ("clean", "dirty", "broken", "empty", "full", "fast", "slow")


def _noun_classes() -> dict[str, _NounClass]:
    size9 = tuple(W.ADJ_SIZE[:9])
    return {
        "person": _NounClass(
            tuple(map(_noun, W.PEOPLE)),
            (tuple(W.ADJ_OPINION[:12]), _PERSON_ADJ, ("tall", "short", "little", "big"), ("old", "young")),
            _PERSON_ADJ + ("tall", "short", "old", "young", "famous", "lucky", "funny", "nice"),
        ),
        "animal": _NounClass(
            tuple(map(_noun, W.ANIMALS)),
            (
                ("beautiful", "pretty", "ugly", "strange", "funny", "lovely", "nasty", "lucky"),
                _ANIMAL_ADJ,
                size9,
                ("old", "young"),
                ("black", "white", "brown", "gray", "orange", "red", "golden"),
            ),
            _ANIMAL_ADJ + ("big", "small", "old", "young"),
        ),
        "object": _NounClass(
            tuple(map(_noun, W.OBJECTS)),
            (
                tuple(W.ADJ_OPINION),
                tuple(W.ADJ_STATE),
                tuple(W.ADJ_SIZE),
                tuple(W.ADJ_AGE),
                tuple(W.ADJ_COLOR),
                tuple(W.ADJ_MATERIAL),
            ),
            tuple(W.ADJ_STATE) + ("new", "old", "heavy", "light", "expensive", "cheap", "strange"),
        ),
        "text": _NounClass(
            tuple(map(_noun, W.TEXTS)),
            (tuple(W.ADJ_OPINION), ("long", "short"), ("old", "new"), ("secret", "important", "boring")),
            (
                "long",
                "short",
                "funny",
                "strange",
                "wonderful",
                "terrible",
                "boring",
                "important",
                "secret",
                "perfect",
            ),
        ),
        "food": _NounClass(
            tuple(map(_noun, W.FOODS)),
            (
                tuple(W.ADJ_TASTE),
                _FOOD_STATE[:6],
                ("big", "small", "little", "huge"),
                ("red", "green", "yellow", "orange", "brown"),
            ),
            tuple(W.ADJ_TASTE) + _FOOD_STATE,
        ),
        "mass": _NounClass(
            tuple((w, w) for w in W.MASS_FOODS),
            (tuple(W.ADJ_TASTE), _FOOD_STATE),
            tuple(W.ADJ_TASTE) + _FOOD_STATE,
            countable=False,
        ),
        "drink": _NounClass(
            tuple((w, w) for w in W.DRINKS),
            (("fresh", "sweet", "sour", "delicious", "strong"), ("hot", "cold", "warm")),
            ("hot", "cold", "warm", "sweet", "sour", "fresh", "strong", "delicious"),
            countable=False,
        ),
        "place": _NounClass(
            tuple(map(_noun, W.PLACES)),
            (tuple(W.ADJ_OPINION), _PLACE_STATE, size9, tuple(W.ADJ_AGE)),
            _PLACE_STATE + ("full", "beautiful", "big", "small", "old", "new", "closed", "open"),
        ),
        "vehicle": _NounClass(
            tuple(map(_noun, W.VEHICLES)),
            (tuple(W.ADJ_OPINION), _VEHICLE_STATE, size9, tuple(W.ADJ_AGE), tuple(W.ADJ_COLOR)),
            _VEHICLE_STATE + ("new", "old", "late", "red"),
        ),
    }


class _Draw:
    """Thin helpers over ``random.Random`` so the grammar code reads like a grammar.

    (``random.Random`` rather than numpy: rejection sampling makes thousands of tiny draws per sentence,
    and numpy's per-call overhead made generation 10x slower.)
    """

    def __init__(self, rng: random.Random):
        self.r = rng

    def pick(self, seq):
        return seq[int(self.r.random() * len(seq))]

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def integer(self, lo: int, hi: int) -> int:
        """Uniform in [lo, hi)."""
        return lo + int(self.r.random() * (hi - lo))

    def weighted(self, options: Sequence[tuple[float, object]]):
        """One option of ``[(weight, value), ...]``; a callable value is called (built only if chosen)."""
        x = self.r.random() * sum(w for w, _ in options)
        chosen = next((v for w, v in options if w > 0), None)
        for w, v in options:
            if w > 0:
                chosen = v
                x -= w
                if x < 0:
                    break
        return chosen() if callable(chosen) else chosen


_FREQ = tuple(W.FREQUENCY)
# verb classes by the noun class of their object
_TRANSITIVE = {
    "object": (W.VERBS_OBJECT, ("object",)),
    "text": (W.VERBS_TEXT, ("text",)),
    "food": (W.VERBS_FOOD, ("food", "mass")),
    "drink": (W.VERBS_DRINK, ("drink",)),
    "being": (W.VERBS_BEING, ("being",)),
    "place": (W.VERBS_PLACE, ("place",)),
    "vehicle": (W.VERBS_VEHICLE, ("vehicle",)),
}
# what an animal can sensibly do to something
_ANIMAL_TRANSITIVE = {
    "food": ([f for f in W.VERBS_FOOD if f[0] in ("eat", "like", "want", "taste")], ("food", "mass")),
    "drink": ([f for f in W.VERBS_DRINK if f[0] == "drink"], ("drink",)),
    "being": (
        [
            f
            for f in W.VERBS_BEING
            if f[0] in ("see", "follow", "watch", "hear", "chase", "love", "miss", "wake")
        ],
        ("being",),
    ),
}


class SentenceGenerator:
    """Random everyday English sentences: lower-case words separated by single spaces.

    Deterministic: all randomness comes from the ``numpy.random.Generator`` passed in.
    """

    def __init__(self):
        self.classes = _noun_classes()
        self.templates: list[tuple[float, Callable[[_Draw], list[str]]]] = [
            (8.0, self._t_statement),
            (2.0, self._t_time_first),
            (3.0, self._t_complex),
            (1.5, self._t_reported),
            (1.5, self._t_there),
            (1.2, self._t_relative),
            (2.5, self._t_yes_no),
            (1.5, self._t_be_question),
            (3.0, self._t_wh_question),
            (3.0, self._t_command),
            (1.5, self._t_numbers),
            (1.0, self._t_dates),
            (1.0, self._t_fixed),
            (2.0, self._t_short),
        ]
        # which word counts each template can produce, estimated once with a fixed seed, so that a
        # request for n words only draws templates that can make n words
        probe = _Draw(random.Random(12345))
        self._lengths = [{len(t(probe)) for _ in range(500)} for _, t in self.templates]

    # ---------------------------------------------------------------------------------- public API

    def sentence(
        self, rng: np.random.Generator | random.Random, n_words: int | None = None, max_tries: int = 10000
    ) -> str:
        """One sentence; with ``n_words``, exactly that many words (rejection sampling over templates).

        ``rng`` advances by exactly one draw, so callers' streams stay aligned whatever the tries.
        """
        seed = int(rng.integers(2**63)) if isinstance(rng, np.random.Generator) else rng.getrandbits(63)
        d = _Draw(random.Random(seed))
        if n_words is None:
            return " ".join(d.weighted([(w, functools.partial(t, d)) for w, t in self.templates]))
        options = [
            (w, t) for (w, t), lens in zip(self.templates, self._lengths, strict=True) if n_words in lens
        ]
        if not options:
            raise ValueError(f"no sentence template makes {n_words} words")
        options = [(w, functools.partial(t, d)) for w, t in options]
        for _ in range(max_tries):
            words = d.weighted(options)
            if len(words) == n_words:
                return " ".join(words)
        raise RuntimeError(f"no {n_words}-word sentence after {max_tries} tries")

    def vocabulary(self) -> frozenset[str]:
        """Every word the grammar can emit."""
        words: set[str] = set(W.FUNCTION_WORDS)
        for seq in (
            W.NAMES,
            W.MODALS,
            W.MANNER,
            W.FREQUENCY,
            W.PLACE_ADVERBS,
            W.DAYS,
            W.MONTHS,
            W.SEASONS,
            W.LOCATIVE,
            W.COMPANION,
            W.SUBORDINATORS,
            W.ONES,
            W.TEENS,
            W.TENS,
            W.UNITS,
            W.SUBJECT_PRONOUNS,
            W.OBJECT_PRONOUNS,
            W.POSSESSIVES,
        ):
            words.update(seq)
        for c in self.classes.values():
            for sg_pl in c.nouns:
                words.update(sg_pl)
            for kind in c.adjectives:
                words.update(kind)
            words.update(c.predicates)
        for verbs in [v for v, _ in _TRANSITIVE.values()] + [W.INTRANSITIVE, W.DITRANSITIVE, W.MOTION]:
            for forms in verbs:
                words.update(forms)
        for phrase in list(W.TIMES) + list(W.FIXED_PHRASES):
            words.update(phrase.split())
        return frozenset(words)

    # ---------------------------------------------------------------------------------- noun phrases

    def _adjectives(self, d: _Draw, cls: _NounClass) -> list[str]:
        k = min(d.weighted([(0.55, 0), (0.35, 1), (0.10, 2)]), len(cls.adjectives))
        kinds = sorted(d.r.sample(range(len(cls.adjectives)), k))
        return [d.pick(cls.adjectives[i]) for i in kinds]

    def _determiner(self, d: _Draw, cls: _NounClass, plural: bool, first: str) -> list[str]:
        if not cls.countable:
            container = (
                ("cup", "glass", "bottle") if cls is self.classes["drink"] else ("bowl", "piece", "plate")
            )
            return d.weighted(
                [
                    (4, ["the"]),
                    (2, ["some"]),
                    (1.5, []),
                    (1, lambda: [d.pick(W.POSSESSIVES)]),
                    (0.7, ["this"]),
                    (0.6, ["a", "lot", "of"]),
                    (0.4, ["no"]),
                    (0.4, ["more"]),
                    (0.8, lambda: ["a", d.pick(container), "of"]),
                ]
            )
        if plural:
            return d.weighted(
                [
                    (4, ["the"]),
                    (2, []),
                    (1.5, ["some"]),
                    (1, ["these"]),
                    (1, ["those"]),
                    (1.5, lambda: [d.pick(W.POSSESSIVES)]),
                    (2, lambda: number_words(d.integer(2, 13))),
                    (0.5, lambda: number_words(d.integer(13, 100))),
                    (1, ["many"]),
                    (0.5, ["a", "few"]),
                    (0.4, ["all", "the"]),
                    (0.3, ["no"]),
                    (0.3, ["more"]),
                ]
            )
        return d.weighted(
            [
                (5, ["the"]),
                (3, [_article(first)]),
                (1, ["this"]),
                (1, ["that"]),
                (2, lambda: [d.pick(W.POSSESSIVES)]),
                (0.4, ["every"]),
                (0.3, ["another"]),
                (0.3, ["one"]),
            ]
        )

    def noun_phrase(
        self, d: _Draw, kind: str, plural: bool | None = None, role: str = "object", modifiers: bool = True
    ) -> _NP:
        """A noun phrase of class ``kind``; "being" means a name, pronoun, person or animal."""
        if kind == "being":
            r = d.r.random()
            if r < 0.25:
                return _NP([d.pick(W.NAMES)], 3, False, "name")
            if r < 0.42:
                if role == "subject":
                    p = d.pick([p for p in W.SUBJECT_PRONOUNS if p != "it"])
                    person, pl = W.SUBJECT_PRONOUNS[p]
                    return _NP([p], person, pl, "pronoun")
                p = d.pick(W.OBJECT_PRONOUNS)
                return _NP([p], 3, p in ("us", "them", "you"), "pronoun")
            kind = "person" if r < 0.77 else "animal"
        cls = self.classes[kind]
        sg, pl_form = d.pick(cls.nouns)
        if not cls.countable:
            plural = False
        elif plural is None:
            plural = d.chance(0.3)
        noun = pl_form if plural else sg
        adjs = self._adjectives(d, cls)
        words = self._determiner(d, cls, plural, (adjs + [noun])[0]) + adjs + [noun]
        if modifiers and d.chance(0.12):
            if kind in ("person", "animal"):

                def wearing():
                    c = d.pick(W.ADJ_COLOR)
                    return ["with", _article(c), c, d.pick(("hat", "coat", "bag", "jacket", "collar"))]

                words += d.weighted(
                    [
                        (2, wearing),
                        (
                            1,
                            lambda: [
                                "from",
                                "the",
                                d.pick(("village", "city", "farm", "school", "hotel", "market")),
                            ],
                        ),
                        (0.5, ["next", "door"]),
                    ]
                )
            elif kind in ("object", "text", "food"):
                words += self._place_phrase(d, ("on", "in", "under", "near", "by", "behind"))
        return _NP(words, 3, bool(plural), kind)

    def _place_phrase(self, d: _Draw, preps: Sequence[str] = W.LOCATIVE) -> list[str]:
        """A locative phrase: "in the old kitchen", "under my bed"."""
        prep = d.pick(preps)
        if prep in ("above", "below", "under", "behind", "beside", "on"):
            kind = "object"  # "under the park" does not work
        else:
            kind = d.weighted([(6, "place"), (3, "object"), (1, "vehicle")])
        return [prep] + self.noun_phrase(
            d, kind, plural=False if d.chance(0.85) else None, modifiers=False
        ).words

    def _time_phrase(self, d: _Draw) -> list[str]:
        return d.weighted(
            [
                (6, lambda: d.pick(W.TIMES).split()),
                (1, lambda: ["on", d.pick(W.DAYS)]),
                (1, lambda: [d.pick(("last", "next")), d.pick(W.DAYS)]),
                (0.6, lambda: ["in", d.pick(W.MONTHS)]),
                (0.6, lambda: ["in", "the", d.pick(W.SEASONS)]),
                (0.6, lambda: ["at"] + self._clock(d)),
            ]
        )

    def _clock(self, d: _Draw) -> list[str]:
        h = number_words(d.integer(1, 13))
        return d.weighted(
            [
                (3, h),
                (1, lambda: h + [d.pick(("fifteen", "thirty", "forty", "twenty"))]),
                (1, ["half", "past"] + h),
                (1, ["a", "quarter", "to"] + h),
                (0.5, ["noon"]),
                (0.5, ["midnight"]),
            ]
        )

    # ---------------------------------------------------------------------------------- verbs

    @staticmethod
    def _be(person: int, plural: bool, past: bool) -> str:
        if past:
            return "were" if plural or person == 2 else "was"
        if person == 1 and not plural:
            return "am"
        return "are" if plural or person == 2 else "is"

    def _verb(self, d: _Draw, forms: Sequence[str], person: int, plural: bool, tense: str) -> list[str]:
        """The verb group: ``tense`` is past, present, future, modal, progressive, past_progressive,
        negative or base (bare infinitive, after an auxiliary)."""
        base, third, past, ing = forms
        third_sg = person == 3 and not plural
        if tense == "base":
            return [base]
        if tense == "present":
            return ([d.pick(_FREQ)] if d.chance(0.2) else []) + [third if third_sg else base]
        if tense == "past":
            pre = [d.pick(("never", "often", "always", "sometimes", "suddenly", "finally", "almost"))]
            return (pre if d.chance(0.1) else []) + [past]
        if tense == "future":
            return ["will", base]
        if tense == "modal":
            return [d.pick(W.MODALS), base]
        if tense == "progressive":
            return [self._be(person, plural, False), ing]
        if tense == "past_progressive":
            return [self._be(person, plural, True), ing]
        if tense == "negative":
            aux = d.weighted(
                [(2, "did"), (1, "does" if third_sg else "do"), (1, "will"), (0.5, "can"), (0.5, "should")]
            )
            return [aux, "not", base]
        raise ValueError(tense)

    def _copula(self, d: _Draw, person: int, plural: bool, tense: str) -> list[str]:
        if tense == "base":
            return ["be"]
        if tense in ("past", "past_progressive"):
            return [self._be(person, plural, True)]
        if tense == "future":
            return ["will", "be"]
        if tense == "modal":
            return [d.pick(("might", "must", "should", "could", "will", "would")), "be"]
        if tense == "negative":
            return [self._be(person, plural, d.chance(0.5)), "not"]
        return [self._be(person, plural, False)]

    def _tense(self, d: _Draw) -> str:
        return d.weighted(
            [
                (4, "past"),
                (3, "present"),
                (1.2, "future"),
                (1.2, "modal"),
                (1.2, "progressive"),
                (0.8, "past_progressive"),
                (1, "negative"),
            ]
        )

    def _transitive(self, d: _Draw, person: int, plural: bool, tense: str, animal: bool = False) -> list[str]:
        if animal:
            verbs, kinds = _ANIMAL_TRANSITIVE[d.pick(("food", "drink", "being"))]
        else:
            verbs, kinds = _TRANSITIVE[
                d.weighted(
                    [
                        (3, "object"),
                        (1, "text"),
                        (2, "food"),
                        (1, "drink"),
                        (2, "being"),
                        (1, "place"),
                        (1, "vehicle"),
                    ]
                )
            ]
        obj = self.noun_phrase(d, d.pick(kinds)).words
        return self._verb(d, d.pick(verbs), person, plural, tense) + obj

    def _predicate(self, d: _Draw, np_: _NP, tense: str) -> list[str]:
        """A verb phrase that suits the subject ``np_``."""
        person, plural = np_.person, np_.plural
        if np_.kind not in _BEINGS:
            return self._copula(d, person, plural, tense) + d.weighted(
                [
                    (3, lambda: [d.pick(self.classes[np_.kind].predicates)]),
                    (
                        1,
                        lambda: [
                            d.pick(("very", "so", "too", "really", "quite")),
                            d.pick(self.classes[np_.kind].predicates),
                        ],
                    ),
                    (2, lambda: self._place_phrase(d)),
                ]
            )
        animal = np_.kind == "animal"
        preds = self.classes["animal" if animal else "person"].predicates

        def intransitive():
            return self._verb(
                d, d.pick(W.INTRANSITIVE[:23] if animal else W.INTRANSITIVE), person, plural, tense
            ) + d.weighted(
                [
                    (3, []),
                    (2, lambda: [d.pick(W.MANNER)]),
                    (2, lambda: self._place_phrase(d)),
                    (0.6, lambda: [d.pick(W.MANNER)] + self._place_phrase(d)),
                ]
            )

        def transitive():
            return self._transitive(d, person, plural, tense, animal) + d.weighted(
                [
                    (4, []),
                    (1, lambda: [d.pick(W.MANNER)]),
                    (1.2, lambda: self._place_phrase(d)),
                    (
                        0.6,
                        lambda: [d.pick(W.COMPANION)] + self.noun_phrase(d, "being", modifiers=False).words,
                    ),
                ]
            )

        def ditransitive():
            to = self.noun_phrase(d, "being", modifiers=False).words
            thing = self.noun_phrase(d, d.pick(("object", "text", "food")), modifiers=False).words
            return self._verb(d, d.pick(W.DITRANSITIVE), person, plural, tense) + to + thing

        def motion():
            dest = d.weighted(
                [
                    (4, lambda: ["to"] + self.noun_phrase(d, "place", plural=False, modifiers=False).words),
                    (2, lambda: [d.pick(("home", "away", "outside", "inside", "upstairs", "downstairs"))]),
                    (
                        1,
                        lambda: (
                            [d.pick(("into", "across", "through", "around"))]
                            + self.noun_phrase(d, "place", plural=False, modifiers=False).words
                        ),
                    ),
                ]
            )
            how = d.weighted(
                [
                    (4, []),
                    (1, lambda: [d.pick(W.MANNER)]),
                    (1, lambda: ["with"] + self.noun_phrase(d, "being", modifiers=False).words),
                    (0.6 * (not animal), lambda: ["by", d.pick(("car", "bus", "train", "bike", "taxi"))]),
                ]
            )
            return self._verb(d, d.pick(W.MOTION), person, plural, tense) + dest + how

        def copula():
            return self._copula(d, person, plural, tense) + d.weighted(
                [
                    (3, lambda: [d.pick(preds)]),
                    (1, lambda: [d.pick(("very", "so", "too", "really", "quite")), d.pick(preds)]),
                    (2, lambda: self._place_phrase(d)),
                    (
                        1.5 * (not animal),
                        lambda: (
                            [d.pick(self.classes["person"].nouns)[1]]
                            if plural
                            else [_article(n := d.pick(self.classes["person"].nouns)[0]), n]
                        ),
                    ),
                ]
            )

        return d.weighted(
            [
                (2, intransitive),
                (4.2, transitive),
                (1 * (not animal), ditransitive),
                (1.3, motion),
                (1.5, copula),
            ]
        )

    def _subject(self, d: _Draw) -> _NP:
        kind = d.weighted(
            [
                (8, "being"),
                (1, "object"),
                (0.6, "food"),
                (0.6, "place"),
                (0.5, "vehicle"),
                (0.3, "text"),
                (0.3, "drink"),
            ]
        )
        np_ = self.noun_phrase(d, kind, role="subject")
        if np_.kind not in _BEINGS and not np_.plural and d.chance(0.15):
            return _NP(["it"], 3, False, np_.kind)
        return np_

    def clause(self, d: _Draw, subordinate: bool = False) -> list[str]:
        np_ = self._subject(d)
        tense = self._tense(d)
        if subordinate and tense in ("future", "modal"):
            tense = d.pick(("present", "past"))
        return np_.words + self._predicate(d, np_, tense)

    # ---------------------------------------------------------------------------------- templates

    def _t_statement(self, d: _Draw) -> list[str]:
        c = self.clause(d)
        return c + self._time_phrase(d) if d.chance(0.3) else c

    def _t_time_first(self, d: _Draw) -> list[str]:
        return self._time_phrase(d) + self.clause(d)

    def _t_complex(self, d: _Draw) -> list[str]:
        main = self.clause(d)
        if d.chance(0.25):
            return main + [d.pick(("and", "but", "so"))] + self.clause(d)
        sub = [d.pick(W.SUBORDINATORS)] + self.clause(d, subordinate=True)
        return sub + main if d.chance(0.5) else main + sub

    def _t_reported(self, d: _Draw) -> list[str]:
        if d.chance(0.5):
            p = d.pick(("i", "you", "he", "she", "we", "they"))
            subj, (person, plural) = [p], W.SUBJECT_PRONOUNS[p]
        else:
            subj, person, plural = [d.pick(W.NAMES)], 3, False
        s = "s" if person == 3 and not plural else ""
        verb = d.weighted(
            [
                (2, ["said"]),
                (1, ["think" + s]),
                (1, ["knew"]),
                (1, ["hope" + s]),
                (0.7, ["told", "me"]),
                (0.7, ["believe" + s]),
                (0.7, ["heard"]),
                (0.7, ["forgot"]),
            ]
        )
        return subj + verb + (["that"] if d.chance(0.6) else []) + self.clause(d)

    def _t_there(self, d: _Draw) -> list[str]:
        plural = d.chance(0.4)
        kind = d.pick(("object", "animal", "person", "food", "vehicle", "text"))
        words = self.noun_phrase(d, kind, plural=plural, modifiers=False).words
        if words[0] in ("the", "this", "that", "these", "those", "all", "every") or words[0] in W.POSSESSIVES:
            words = (["some"] if plural else [_article(words[1 + (words[0] == "all")])]) + words[
                1 + (words[0] == "all") :
            ]
        be = d.weighted(
            [
                (3, [self._be(3, plural, False)]),
                (3, [self._be(3, plural, True)]),
                (1, ["will", "be"]),
                (0.5, lambda: [self._be(3, plural, d.chance(0.5)), "not"]),
            ]
        )
        tail = self._place_phrase(d) if d.chance(0.85) else []
        return ["there"] + be + words + tail + (self._time_phrase(d) if d.chance(0.15) else [])

    def _t_relative(self, d: _Draw) -> list[str]:
        """ "the man who lives near the river is a doctor", "the cake that tom made was delicious"."""
        kind = d.pick(("person", "animal", "object", "food", "place"))
        head = self.noun_phrase(d, kind, modifiers=False)
        words = head.words
        if words[0] in ("a", "an", "another", "one", "every"):
            words = ["the"] + words[1:]
        if kind in ("person", "animal"):
            rel = ["who" if kind == "person" else "that"] + self._predicate(
                d, head, d.pick(("past", "present"))
            )
        else:
            verbs = {"object": W.VERBS_OBJECT, "food": W.VERBS_FOOD, "place": W.VERBS_PLACE}[kind]
            rel = (
                ["that"]
                + self.noun_phrase(d, "being", role="subject", modifiers=False).words
                + [d.pick(verbs)[2]]
            )
        return words + rel + self._predicate(d, head, self._tense(d))

    def _aux(self, d: _Draw, np_: _NP, copula: bool) -> str:
        third = np_.person == 3 and not np_.plural
        if copula:  # "did you be happy" is not English
            return d.weighted([(2, "will"), (1, "can"), (1, "could"), (0.7, "should"), (0.5, "would")])
        return d.weighted(
            [
                (3, "did"),
                (2, "does" if third else "do"),
                (1.5, "will"),
                (1.5, "can"),
                (0.7, "could"),
                (0.5, "should"),
                (0.4, "would"),
            ]
        )

    def _question_subject(self, d: _Draw, kind: str = "being") -> _NP:
        np_ = self.noun_phrase(d, kind, role="subject", modifiers=d.chance(0.5))
        return _NP(["you"], 2, True, "pronoun") if np_.words == ["i"] and d.chance(0.8) else np_

    def _t_yes_no(self, d: _Draw) -> list[str]:
        """ "did the dog eat the cake", "can you help me", "will they be at the station"."""
        np_ = self._question_subject(d)
        pred = self._predicate(d, np_, "base")
        out = [self._aux(d, np_, pred[0] == "be")] + np_.words + pred
        return out + self._time_phrase(d) if d.chance(0.2) else out

    def _t_be_question(self, d: _Draw) -> list[str]:
        """ "is the soup hot", "were the children sleeping in the garden"."""
        kind = d.weighted([(4, "being"), (1, "object"), (1, "food"), (1, "place"), (0.5, "vehicle")])
        np_ = self._question_subject(d, kind)
        if np_.words == ["i"]:
            np_ = _NP(["you"], 2, True, "pronoun")
        be = [self._be(np_.person, np_.plural, d.chance(0.4))]
        preds = self.classes["person" if np_.kind in ("name", "pronoun") else np_.kind].predicates
        tail = d.weighted(
            [
                (3, lambda: [d.pick(preds)]),
                (2, lambda: self._place_phrase(d)),
                (1, lambda: [d.pick(("still", "really", "very", "too")), d.pick(preds)]),
                (
                    1.5 * (np_.kind in _BEINGS),
                    lambda: [d.pick(W.INTRANSITIVE)[3]] + (self._place_phrase(d) if d.chance(0.4) else []),
                ),
            ]
        )
        return be + np_.words + tail

    def _t_wh_question(self, d: _Draw) -> list[str]:
        np_ = self._question_subject(d)
        r = d.r.random()
        if r < 0.25:  # object questions: "what did you buy", "which book does she want"
            cls = d.pick(("object", "text", "food", "drink", "being"))
            verbs, kinds = (
                _ANIMAL_TRANSITIVE if np_.kind == "animal" and cls in _ANIMAL_TRANSITIVE else _TRANSITIVE
            )[cls]
            wh = ["who"] if cls == "being" else ["what"]
            if cls in ("object", "food", "text") and d.chance(0.3):
                wh = ["which", d.pick(self.classes[cls].nouns)[0]]
            tail = d.weighted(
                [(3, []), (1, lambda: self._place_phrase(d)), (1, lambda: self._time_phrase(d))]
            )
            return wh + [self._aux(d, np_, False)] + np_.words + [d.pick(verbs)[0]] + tail
        if r < 0.4:  # subject questions: "who broke the window"
            verbs, kinds = _TRANSITIVE[d.pick(("object", "text", "food", "being", "vehicle"))]
            obj = self.noun_phrase(d, d.pick(kinds)).words
            return ["who", d.pick(verbs)[2]] + obj + (self._time_phrase(d) if d.chance(0.2) else [])
        if r < 0.55:  # "how many books did you read"
            kind = d.pick(("object", "food", "animal", "vehicle", "text", "person"))
            verbs = {
                "object": W.VERBS_OBJECT,
                "food": W.VERBS_FOOD,
                "animal": W.VERBS_BEING,
                "vehicle": W.VERBS_VEHICLE,
                "text": W.VERBS_TEXT,
                "person": W.VERBS_BEING,
            }[kind]
            tail = d.weighted(
                [(2, []), (1, lambda: self._place_phrase(d)), (1, lambda: self._time_phrase(d))]
            )
            return (
                ["how", "many", d.pick(self.classes[kind].nouns)[1], self._aux(d, np_, False)]
                + np_.words
                + [d.pick(verbs)[0]]
                + tail
            )
        if r < 0.72:  # "why did the boy leave the party", "where does tom work"
            wh = d.pick(("where", "why", "when", "how"))
            if wh == "where":
                pred = d.weighted(
                    [
                        (1, lambda: [d.pick(W.INTRANSITIVE)[0]]),
                        (1, lambda: self._transitive(d, 1, True, "base", np_.kind == "animal")),
                    ]
                )
            else:
                pred = self._predicate(d, np_, "base")
            return [wh, self._aux(d, np_, pred[0] == "be")] + np_.words + pred
        if r < 0.87:  # "where is the station", "why was the soup cold"
            kind = d.pick(("object", "food", "place", "vehicle", "text", "person", "animal"))
            thing = self.noun_phrase(d, kind, modifiers=False)
            be = self._be(thing.person, thing.plural, d.chance(0.3))
            wh = d.pick(("where", "why", "how", "what color", "how big", "how old")).split()
            if wh[0] == "why":
                return wh + [be] + thing.words + [d.pick(self.classes[kind].predicates)]
            return wh + [be] + thing.words
        kind = d.pick(("mass", "drink"))
        verb = d.pick(("need", "want", "buy", "have", "drink" if kind == "drink" else "eat"))
        return (
            ["how", "much", d.pick(self.classes[kind].nouns)[0], self._aux(d, np_, False)]
            + np_.words
            + [verb]
        )

    def _t_command(self, d: _Draw) -> list[str]:
        r = d.r.random()
        if r < 0.45:  # "put the red cup on the table"
            verbs, kinds = _TRANSITIVE[
                d.weighted(
                    [
                        (3, "object"),
                        (1, "text"),
                        (2, "food"),
                        (1, "drink"),
                        (1.5, "being"),
                        (0.6, "place"),
                        (0.6, "vehicle"),
                    ]
                )
            ]
            body = (
                [d.pick(verbs)[0]]
                + self.noun_phrase(d, d.pick(kinds)).words
                + d.weighted(
                    [
                        (3, []),
                        (1.5, lambda: [d.pick(W.MANNER)]),
                        (1.5, lambda: self._place_phrase(d)),
                        (1, lambda: self._time_phrase(d)),
                    ]
                )
            )
        elif r < 0.6:  # "give me the keys"
            to = [d.pick(("me", "him", "her", "us", "them"))] if d.chance(0.6) else [d.pick(W.NAMES)]
            body = (
                [d.pick(W.DITRANSITIVE)[0]]
                + to
                + self.noun_phrase(d, d.pick(("object", "text", "food")), modifiers=False).words
            )
        elif r < 0.75:  # "go to the station tomorrow"
            dest = d.weighted(
                [
                    (3, lambda: ["to"] + self.noun_phrase(d, "place", False, modifiers=False).words),
                    (2, lambda: [d.pick(W.PLACE_ADVERBS)]),
                ]
            )
            body = [d.pick(W.MOTION)[0]] + dest + (self._time_phrase(d) if d.chance(0.3) else [])
        elif r < 0.85:  # "sing quietly"
            body = [d.pick(W.INTRANSITIVE)[0]] + d.weighted(
                [
                    (2, lambda: [d.pick(W.MANNER)]),
                    (2, lambda: self._place_phrase(d)),
                    (1, lambda: [d.pick(W.PLACE_ADVERBS)]),
                ]
            )
        else:  # "be careful"
            body = [
                "be",
                d.pick(
                    (
                        "careful",
                        "quiet",
                        "polite",
                        "kind",
                        "patient",
                        "calm",
                        "brave",
                        "nice",
                        "gentle",
                        "honest",
                        "ready",
                        "happy",
                    )
                ),
            ]
            if d.chance(0.3):
                body += d.weighted(
                    [
                        (1, lambda: ["with"] + self.noun_phrase(d, "being", modifiers=False).words),
                        (1, lambda: self._time_phrase(d)),
                    ]
                )
        pre = d.weighted(
            [
                (5, []),
                (1.5, ["please"]),
                (1, ["do", "not"]),
                (0.8, ["let", "us"]),
                (0.5, ["never"]),
                (0.5, ["always"]),
            ]
        )
        body = ["me" if w == "you" else w for w in body]  # "please call you" is not a command
        out = pre + body
        if pre in ([], ["please"]) and d.chance(0.08):
            out = [d.pick(W.NAMES)] + out
        if not pre and d.chance(0.1):
            out = out + ["please"]
        return out

    def _t_numbers(self, d: _Draw) -> list[str]:
        r = d.r.random()
        if r < 0.18:  # "the red umbrella costs twelve dollars"
            thing = self.noun_phrase(
                d, d.pick(("object", "food", "text")), plural=False, modifiers=False
            ).words
            return thing + [d.pick(("costs", "cost")), *number_words(d.integer(2, 200)), "dollars"]
        if r < 0.3:  # "it takes ten minutes to walk to the station"
            return [
                "it",
                d.pick(("takes", "took")),
                *number_words(d.integer(2, 60)),
                d.pick(("minutes", "hours")),
                "to",
                d.pick(W.MOTION)[0],
                "to",
                "the",
                d.pick(self.classes["place"].nouns)[0],
            ]
        if r < 0.42:  # "my uncle is forty two years old"
            who = d.pick([[n] for n in W.NAMES] + [["my", n[0]] for n in self.classes["person"].nouns])
            return who + [d.pick(("is", "was")), *number_words(d.integer(2, 100)), "years", "old"]
        if r < 0.58:  # "we had twelve apples in the kitchen"
            np_ = self.noun_phrase(d, "being", role="subject", modifiers=False)
            third = np_.person == 3 and not np_.plural
            have = d.pick(("had", "has" if third else "have", "bought", "found", "saw"))
            nouns = self.classes[d.pick(("object", "food", "animal", "text", "vehicle"))].nouns
            return (
                np_.words
                + [have, *number_words(d.integer(2, 40)), d.pick(nouns)[1]]
                + (self._place_phrase(d) if d.chance(0.3) else [])
            )
        if r < 0.72:  # "the bus leaves at half past six"
            kind = d.pick(("vehicle", "place"))
            thing = ["the"] + self.noun_phrase(d, kind, plural=False, modifiers=False).words[1:]
            verb = d.pick(
                ("leaves", "left", "arrives", "arrived", "stops", "stopped")
                if kind == "vehicle"
                else ("opens", "opened", "closes", "closed")
            )
            return thing + [verb, "at"] + self._clock(d)
        if r < 0.8:  # "she read twenty pages", "walk ten steps"
            if d.chance(0.5):
                np_ = self.noun_phrase(d, "being", role="subject", modifiers=False)
                return np_.words + [
                    d.pick(("read", "wrote", "printed")),
                    *number_words(d.integer(2, 300)),
                    "pages",
                ]
            return [d.pick(("walk", "take", "run", "climb")), *number_words(d.integer(2, 30)), "steps"]
        np_ = self.noun_phrase(d, "being", role="subject", modifiers=False)
        forms = d.pick(W.MOTION[:4] + W.INTRANSITIVE[:4])
        unit = d.pick(
            ("minutes", "hours", "days", "weeks", "years")
            + (("miles",) if forms[0] in ("walk", "run", "drive") else ())
        )
        return (
            np_.words
            + self._verb(d, forms, np_.person, np_.plural, d.pick(("past", "future", "present")))
            + ["for", *number_words(d.integer(2, 60)), unit]
        )

    def _t_dates(self, d: _Draw) -> list[str]:
        r = d.r.random()
        if r < 0.35:  # "my birthday is in may"
            when = d.weighted(
                [
                    (1, lambda: ["in", d.pick(W.MONTHS)]),
                    (1, lambda: ["on", d.pick(W.DAYS)]),
                    (1, lambda: ["in", "the", d.pick(W.SEASONS)]),
                ]
            )
            return [
                d.pick(W.POSSESSIVES + ["the"]),
                d.pick(("birthday", "party", "holiday", "exam", "wedding", "concert")),
                "is",
            ] + when
        if r < 0.75:  # "tom went to the museum on friday"
            np_ = self.noun_phrase(d, "being", role="subject", modifiers=False)
            return (
                np_.words
                + self._verb(d, d.pick(W.MOTION), np_.person, np_.plural, d.pick(("past", "future")))
                + ["to", "the", d.pick(self.classes["place"].nouns)[0], "on", d.pick(W.DAYS)]
            )
        if r < 0.85:
            return [d.pick(W.SEASONS), "is", "my", "favorite", "season"]
        return [
            "the",
            d.pick(("shop", "bank", "library", "museum", "school")),
            "is",
            "closed",
            "on",
            d.pick(W.DAYS),
        ]

    def _t_fixed(self, d: _Draw) -> list[str]:
        out = d.pick(W.FIXED_PHRASES).split()
        return out + [d.pick(W.NAMES)] if d.chance(0.3) else out

    def _t_short(self, d: _Draw) -> list[str]:
        """Two- and three-word sentences, so that the shortest curriculum bucket is not all fixed phrases."""
        r = d.r.random()
        if r < 0.4:  # "tom laughed"
            np_ = self.noun_phrase(d, "being", role="subject", modifiers=False)
            if len(np_.words) > 2:
                np_ = _NP([d.pick(W.NAMES)], 3, False, "name")
            return np_.words + self._verb(
                d, d.pick(W.INTRANSITIVE), np_.person, np_.plural, d.pick(("past", "present"))
            )
        if r < 0.7:  # "call me", "drink water"
            cls = d.pick(("object", "food", "drink", "being", "text"))
            verbs, kinds = _TRANSITIVE[cls]
            obj = (
                [d.pick(W.OBJECT_PRONOUNS)]
                if cls == "being"
                else ["it"]
                if cls in ("object", "text") and d.chance(0.5)
                else [d.pick(self.classes[d.pick(kinds)].nouns)[1]]
            )
            return [d.pick(verbs)[0]] + obj
        if r < 0.85:  # "sit outside"
            return [d.pick(W.INTRANSITIVE)[0], d.pick(W.MANNER + W.PLACE_ADVERBS)]
        np_ = self.noun_phrase(d, "being", role="subject", modifiers=False)  # "she was tired"
        if len(np_.words) > 2:
            np_ = _NP([d.pick(W.NAMES)], 3, False, "name")
        preds = self.classes["animal" if np_.kind == "animal" else "person"].predicates
        return np_.words + [self._be(np_.person, np_.plural, d.chance(0.5)), d.pick(preds)]


@functools.lru_cache(maxsize=1)
def _generator() -> SentenceGenerator:
    return SentenceGenerator()


def vocabulary() -> frozenset[str]:
    """All words the sentence grammar can emit."""
    return _generator().vocabulary()


def generate_sentences(n: int, seed: int, min_words: int = 2, max_words: int = 12) -> list[str]:
    """``n`` sentences, word counts uniform in [min_words, max_words]; same seed, same list."""
    rng = np.random.default_rng(seed)
    gen = _generator()
    return [gen.sentence(rng, int(rng.integers(min_words, max_words + 1))) for _ in range(n)]


def normalize_text(text: str) -> str:
    """The form in which transcripts are compared (dedupe across splits)."""
    return " ".join(text.lower().split())


# ==================================================================================================
# eSpeak NG through ctypes
# ==================================================================================================

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_EE_OK = 0

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _EspeakVoice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


class ESpeak:
    """eSpeak NG from the ``espeakng_loader`` wheel, synchronous mode.

    The C library keeps global state (one voice, one callback), so this is a per-process singleton:
    ``ESpeak()`` always returns the same initialised object, and calls are serialised with a lock.
    """

    _instance: ESpeak | None = None
    _create_lock = threading.Lock()

    def __new__(cls) -> ESpeak:
        with cls._create_lock:
            if cls._instance is None:
                self = super().__new__(cls)
                self._initialise()
                cls._instance = self
            return cls._instance

    def _initialise(self) -> None:
        import espeakng_loader

        self.data_path = espeakng_loader.get_data_path()
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}) with data at {self.data_path}")
        self.lib = lib
        self.native_rate = rate
        self._chunks: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._voice: str | None = None
        # keep a reference: ctypes would free the trampoline and eSpeak would call into garbage
        self._callback = _SYNTH_CALLBACK(self._on_samples)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_samples(self, wav, n, events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = keep synthesising

    def list_voices(self, language: str = "en") -> list[str]:
        """Voice identifiers (e.g. ``gmw/en-US``) whose language starts with ``language``."""
        voices = self.lib.espeak_ListVoices(None)
        out, i = [], 0
        while voices[i]:
            v = voices[i].contents
            # languages is a list of (priority byte, name, NUL); the first name is the main one
            lang = v.languages[1:].decode(errors="replace") if v.languages else ""
            if lang.startswith(language):
                out.append(v.identifier.decode())
            i += 1
        return sorted(out)

    def list_variants(self) -> list[str]:
        """Variant names usable after ``+`` in a voice name (``en-us+f3``)."""
        return sorted(p.name for p in (Path(self.data_path) / "voices" / "!v").iterdir() if p.is_file())

    def synthesize_native(
        self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50
    ) -> np.ndarray:
        """int16 samples at ``native_rate`` (22050 Hz). ``rate`` is words per minute, ``pitch`` 0..100."""
        if not 80 <= rate <= 450:
            raise ValueError(f"rate {rate} outside eSpeak's 80..450 words per minute")
        if not 0 <= pitch <= 100:
            raise ValueError(f"pitch {pitch} outside 0..100")
        data = text.encode("utf-8")
        with self._lock:
            if voice != self._voice:
                err = self.lib.espeak_SetVoiceByName(voice.encode())
                if err != _EE_OK:
                    self._voice = None
                    raise ValueError(f"eSpeak voice not found: {voice!r} (error {err})")
                self._voice = voice
            self.lib.espeak_SetParameter(_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self._chunks = []
            err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if err != _EE_OK:
                raise RuntimeError(f"espeak_Synth failed with error {err}")
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    def synthesize(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> np.ndarray:
        """float32 mono audio at 16 kHz."""
        import soxr

        pcm = self.synthesize_native(text, voice, rate, pitch).astype(np.float32) / 32768.0
        if pcm.size == 0:
            return pcm
        return soxr.resample(pcm, self.native_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


# ==================================================================================================
# Corpus
# ==================================================================================================


@dataclass(frozen=True)
class _Item:
    id: str
    split: str
    text: str
    n_words: int
    voice: str
    heldout_voice: bool
    rate: int
    pitch: int
    seed: int
    snr_db: float | None


def _trim(audio: np.ndarray, rel_threshold: float = 0.005) -> np.ndarray:
    """Cut leading/trailing samples quieter than ``rel_threshold`` x peak (-46 dB)."""
    loud = np.flatnonzero(np.abs(audio) > rel_threshold * float(np.abs(audio).max()))
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio[:0]


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """White or pink (1/f power) Gaussian noise with unit variance."""
    white = rng.standard_normal(n)
    if rng.random() < 0.5:
        return white
    spec = np.fft.rfft(white)
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    pink = np.fft.irfft(spec / np.sqrt(f), n)
    return pink / (pink.std() + 1e-12)


def _render(
    item: _Item, margin: tuple[float, float] = (0.05, 0.2), max_duration: float = 5.0
) -> np.ndarray | None:
    """The utterance as int16 at 16 kHz, or None when longer than ``max_duration`` (never truncated)."""
    rng = np.random.default_rng(item.seed)
    speech = _trim(ESpeak().synthesize(item.text, item.voice, item.rate, item.pitch))
    if speech.size == 0:
        raise RuntimeError(f"eSpeak produced no audio for {item}")
    lead, trail = (int(rng.uniform(*margin) * SAMPLE_RATE) for _ in range(2))
    if (lead + speech.size + trail) / SAMPLE_RATE > max_duration:
        return None
    audio = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(trail, np.float32)]).astype(
        np.float64
    )
    if item.snr_db is not None:
        power = float(np.mean(speech.astype(np.float64) ** 2))
        audio += _noise(rng, audio.size) * np.sqrt(power / 10 ** (item.snr_db / 10))
    audio *= rng.uniform(0.3, 0.9) / max(float(np.abs(audio).max()), 1e-9)  # random peak level
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)


def _make(item: _Item, root: str, margin: tuple[float, float], max_duration: float) -> dict | None:
    """Render and write one utterance; the manifest row, or None if it was too long."""
    import soundfile as sf

    pcm = _render(item, margin, max_duration)
    if pcm is None:
        return None
    rel = f"{item.split}/{item.id}.flac"
    sf.write(os.path.join(root, rel), pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    row = {
        "audio": rel,
        "text": item.text,
        "voice": item.voice,
        "duration": round(pcm.size / SAMPLE_RATE, 4),
        "n_words": item.n_words,
        "num_samples": int(pcm.size),
        "id": item.id,
        "split": item.split,
        "heldout_voice": item.heldout_voice,
        "rate": item.rate,
        "pitch": item.pitch,
        "snr_db": item.snr_db,
        "seed": item.seed,
    }
    return row


def _make_batch(
    items: list[_Item], root: str, margin: tuple[float, float], max_duration: float
) -> list[tuple[_Item, dict | None]]:
    return [(it, _make(it, root, margin, max_duration)) for it in items]


class _Planner:
    """Draws utterance specs; keeps every text in exactly one split."""

    def __init__(self, p: dict):
        self.p = p
        self.rng = np.random.default_rng(p["seed"])
        self.gen = _generator()
        self.owner: dict[str, str] = {}  # normalized text -> split
        self.count = {s: 0 for s in SPLITS}

    def text(self, split: str) -> tuple[str, int]:
        """A sentence owned by no other split; duplicates inside a split only when hard to avoid."""
        # n stays fixed across retries: redrawing it would thin out the short (few distinct) sentences
        n = int(self.rng.integers(self.p["min_words"], self.p["max_words"] + 1))
        for attempt in range(200):
            t = normalize_text(self.gen.sentence(self.rng, n))
            owner = self.owner.get(t)
            if owner is None or (owner == split and attempt >= 20):
                self.owner[t] = split
                return t, n
        raise RuntimeError(f"could not draw a new sentence for {split}; the grammar is exhausted")

    def item(self, split: str, voice: str) -> _Item:
        text, n = self.text(split)
        p, rng = self.p, self.rng
        snr = round(float(rng.uniform(*p["snr_db"])), 1) if rng.random() < p["noise"] else None
        idx = self.count[split]
        self.count[split] += 1
        return _Item(
            id=f"{split}-{idx:06d}",
            split=split,
            text=text,
            n_words=n,
            voice=voice,
            heldout_voice=voice in p["heldout_voices"],
            rate=int(rng.integers(p["rate"][0], p["rate"][1] + 1)),
            pitch=int(rng.integers(p["pitch"][0], p["pitch"][1] + 1)),
            seed=int(rng.integers(2**31)),
            snr_db=snr,
        )

    def voices(self, split: str, n: int) -> list[str]:
        """Balanced voice assignment; evaluation splits get ``heldout_fraction`` held-out voices."""
        train, held = list(self.p["train_voices"]), list(self.p["heldout_voices"])
        if split == "train":
            out = [train[i % len(train)] for i in range(n)]
        else:
            k = int(round(n * self.p["heldout_fraction"])) if held else 0
            out = [held[i % len(held)] for i in range(k)] + [train[i % len(train)] for i in range(n - k)]
        return [out[i] for i in self.rng.permutation(n)]


def _run(
    batches: Iterable[list[_Item]], root: Path, p: dict, workers: int, progress: Callable[[int], None]
) -> list[tuple[_Item, dict | None]]:
    """Render batches of items, in this process or in a pool of ``workers`` processes.

    ``batches`` is consumed lazily, so the parent plans the next batches while the workers render.
    """
    fn = functools.partial(
        _make_batch, root=str(root), margin=tuple(p["margin"]), max_duration=p["max_duration"]
    )
    out: list[tuple[_Item, dict | None]] = []
    if workers <= 1:
        for b in batches:
            out += fn(b)
            progress(len(b))
        return out
    # spawn, not fork: the caller may already run jax threads, which fork would copy in a broken state
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    pending: collections.deque = collections.deque()
    try:
        for b in batches:
            pending.append(pool.submit(fn, b))
            while len(pending) > 3 * workers:  # bounded: keep the workers busy, not the memory
                res = pending.popleft().result()
                out += res
                progress(len(res))
        while pending:
            res = pending.popleft().result()
            out += res
            progress(len(res))
    finally:
        pool.shutdown(cancel_futures=True)
    return out


def _default_workers() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(n, 8))


def _build_into(root: Path, p: dict, workers: int, progress: bool) -> dict:
    """Render the corpus described by ``p`` into the new directory ``root``; corpus.json is written last."""
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for s in SPLITS:
        (root / s).mkdir(parents=True)
    planner = _Planner(p)
    sizes = {"test": p["n_test"], "validation": p["n_val"], "train": p["n_train"]}
    # test first, so that train cannot claim a sentence the test split wants
    want: list[tuple[str, str]] = []
    for split in ("test", "validation", "train"):
        want += [(split, v) for v in planner.voices(split, sizes[split])]
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    dropped = 0
    processed = 0
    plan_seconds = 0.0
    total = sum(sizes.values())

    def report(k: int) -> None:
        nonlocal processed
        before, processed = processed, processed + k
        if progress and (before // 2000 != processed // 2000 or processed >= total):
            rate = processed / max(time.perf_counter() - t0, 1e-9)
            print(f"synthetic: {processed}/{total} utterances, {rate:.0f}/s", file=sys.stderr, flush=True)

    def plan(want: list[tuple[str, str]]) -> Iterable[list[_Item]]:
        nonlocal plan_seconds
        for i in range(0, len(want), 64):
            tp = time.perf_counter()
            batch = [planner.item(split, voice) for split, voice in want[i : i + 64]]
            plan_seconds += time.perf_counter() - tp
            yield batch

    for _round in range(20):
        if not want:
            break
        # a pool costs about a second to start: not worth it for small jobs
        n_proc = workers if len(want) >= 256 else 1
        results = _run(plan(want), root, p, n_proc, report)
        want = []
        for item, row in results:
            if row is None:  # too long: same split and voice, a fresh sentence next round
                dropped += 1
                want.append((item.split, item.voice))
            else:
                rows[item.split].append(row)
        total += len(want)
    if want:
        raise RuntimeError(
            f"{len(want)} utterances stayed longer than {p['max_duration']} s; "
            "lower max_words or raise the rate"
        )
    for s in SPLITS:
        rows[s].sort(key=lambda r: r["id"])
        with open(root / f"{s}.jsonl", "w") as f:
            for r in rows[s]:
                f.write(json.dumps(r) + "\n")
    seconds = time.perf_counter() - t0
    words = set()
    for r in rows["train"]:
        words.update(r["text"].split())
    info = {
        "format_version": FORMAT_VERSION,
        "complete": True,
        "params": p,
        "audio_paths": "relative to this directory",
        "sample_rate": SAMPLE_RATE,
        "counts": {s: len(rows[s]) for s in SPLITS},
        "hours": {s: round(sum(r["duration"] for r in rows[s]) / 3600, 4) for s in SPLITS},
        "mean_duration": {
            s: round(float(np.mean([r["duration"] for r in rows[s]])), 3) if rows[s] else 0.0 for s in SPLITS
        },
        "voices": {s: sorted({r["voice"] for r in rows[s]}) for s in SPLITS},
        "dropped_too_long": dropped,
        "distinct_train_words": len(words),
        "build_seconds": round(seconds, 2),
        "plan_seconds": round(plan_seconds, 2),
        "parent_cpu_seconds": round(time.process_time() - cpu0, 2),
        "utterances_per_second": round(sum(len(v) for v in rows.values()) / max(seconds, 1e-9), 1),
        "workers": workers,
    }
    with open(root / "corpus.json", "w") as f:
        json.dump(info, f, indent=1)
    return info


# ---------------------------------------------------------------------------------- public corpus API

_NOT_HASHED = ("workers", "overwrite", "progress")


def build_corpus(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 20000,
    n_val: int = 300,
    n_test: int = 500,
    seed: int = 0,
    noise: float = 0.0,
    snr_db: tuple[float, float] = (5.0, 30.0),
    min_words: int = 2,
    max_words: int = 12,
    rate: tuple[int, int] = (150, 210),
    pitch: tuple[int, int] = (30, 70),
    train_voices: Sequence[str] = TRAIN_VOICES,
    heldout_voices: Sequence[str] = HELDOUT_VOICES,
    heldout_fraction: float = 0.5,
    margin: tuple[float, float] = (0.05, 0.2),
    max_duration: float = 5.0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Path]:
    """Build a corpus in ``out_dir``; returns ``{"train"|"validation"|"test": manifest path}``.

    ``noise`` is the fraction of utterances given additive white/pink noise at an SNR drawn from
    ``snr_db``; ``rate`` (words per minute) and ``pitch`` (0..100) are drawn per utterance. Built in a
    temporary sibling directory and renamed into place, so ``out_dir`` is either complete or absent.
    """
    params = _params(locals())
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True)")
    _build_atomic(out, params, workers, progress, replace=overwrite)
    return manifest_paths(out)


def _params(local_vars: dict) -> dict:
    """The hashed build parameters, JSON-normalised (tuples -> lists)."""
    p = {k: local_vars[k] for k in _DEFAULTS}
    p = json.loads(json.dumps(p))
    for s in ("train_voices", "heldout_voices"):
        p[s] = list(p[s])
    if set(p["train_voices"]) & set(p["heldout_voices"]):
        raise ValueError("a held-out voice is also a training voice")
    if not 1 <= p["min_words"] <= p["max_words"]:
        raise ValueError("need 1 <= min_words <= max_words")
    if min(p["n_train"], p["n_val"], p["n_test"]) < 0 or not 0.0 <= p["noise"] <= 1.0:
        raise ValueError("split sizes must be >= 0 and noise a fraction in [0, 1]")
    if not (80 <= p["rate"][0] <= p["rate"][1] <= 450 and 0 <= p["pitch"][0] <= p["pitch"][1] <= 100):
        raise ValueError("rate must lie in 80..450 words per minute and pitch in 0..100")
    return p


def _build_atomic(out: Path, params: dict, workers: int | None, progress: bool, replace: bool) -> dict | None:
    """Build into ``.<name>.tmp-<pid>`` next to ``out`` and rename it into place; returns corpus info.

    Returns None when another process completed the same corpus first.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        info = _build_into(tmp, params, workers or _default_workers(), progress)
        if replace and out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, out)  # atomic; fails if out is a non-empty directory
            except OSError:
                if is_complete(out):
                    shutil.rmtree(tmp, ignore_errors=True)
                    return None
                raise
        return info
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_DEFAULTS = {
    k: v.default
    for k, v in inspect.signature(build_corpus).parameters.items()
    if v.kind is inspect.Parameter.KEYWORD_ONLY and k not in _NOT_HASHED
}
CORPUS_DEFAULTS = dict(_DEFAULTS)  # the corpus parameters (all hashed into the cache key) and their defaults


def corpus_key(**params) -> str:
    """Directory name for a parameter set: format version + hash of the (defaults-completed) parameters."""
    unknown = set(params) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown corpus parameters: {sorted(unknown)}")
    p = _params({**_DEFAULTS, **params})
    digest = hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:16]
    return f"v{FORMAT_VERSION}-{digest}"


def default_cache_dir() -> Path:
    """``$JAX_WHISPER_CACHE/synthetic`` or ``~/.cache/jax_whisper/synthetic``."""
    root = os.environ.get("JAX_WHISPER_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "jax_whisper"
    )
    return Path(root) / "synthetic"


def is_complete(corpus_dir: str | os.PathLike) -> bool:
    """True if ``corpus_dir`` holds a finished corpus of the current format."""
    d = Path(corpus_dir)
    try:
        info = json.loads((d / "corpus.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        info.get("complete") is True
        and info.get("format_version") == FORMAT_VERSION
        and all((d / f"{s}.jsonl").is_file() for s in SPLITS)
    )


def manifest_paths(corpus_dir: str | os.PathLike) -> dict[str, Path]:
    d = Path(corpus_dir)
    return {s: d / f"{s}.jsonl" for s in SPLITS}


def ensure_corpus(
    cache_dir: str | os.PathLike | None = None,
    *,
    workers: int | None = None,
    progress: bool = False,
    **params,
) -> dict[str, Path]:
    """The corpus for ``params`` (see :func:`build_corpus`) under ``cache_dir``, built only if missing.

    ``cache_dir`` is the directory holding corpora (default :func:`default_cache_dir`); each lives in
    ``<cache_dir>/<corpus_key(**params)>``. Returns the manifest paths like :func:`build_corpus`.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / corpus_key(**params)
    if is_complete(out):
        log.info("reusing synthetic corpus %s", out)
        return manifest_paths(out)
    _remove_stale_tmp(out)
    if out.exists():  # incomplete leftovers (should not happen with the atomic rename); rebuild
        shutil.rmtree(out)
    log.info("building synthetic corpus %s", out)
    _build_atomic(out, _params({**_DEFAULTS, **params}), workers, progress, replace=False)
    return manifest_paths(out)


def _remove_stale_tmp(out: Path) -> None:
    """Delete temporary build directories of ``out`` whose process no longer exists (killed builds)."""
    if not out.parent.is_dir():
        return
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(tmp, ignore_errors=True)


def corpus_info(corpus_dir: str | os.PathLike) -> dict:
    """The contents of ``corpus.json`` (parameters, counts, hours, build time)."""
    return json.loads((Path(corpus_dir) / "corpus.json").read_text())


def load_manifest(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``.jsonl`` manifest with ``audio`` resolved to an absolute path."""
    path = Path(path)
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                r["audio"] = str((path.parent / r["audio"]).resolve())
                rows.append(r)
    return rows


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
