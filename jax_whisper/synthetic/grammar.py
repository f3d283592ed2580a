"""The sentence grammar of the synthetic corpus: :class:`SentenceGenerator`, a small English grammar (statements,
questions, commands, subordinate and relative clauses, numbers, times) producing lower-case transcripts with an exact
word count. Its word lists live in :mod:`jax_whisper.synthetic.words`; speaking and storing the sentences is left to
:mod:`~jax_whisper.synthetic.espeak` and :mod:`~jax_whisper.synthetic.corpus`.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from jax_whisper.synthetic import words as W


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
