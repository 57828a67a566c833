"""The knowledge base of the MM1 world: made-up facts that only the text corpus states.

Every allowed (colour, shape) pair gets an invented name, a home and a use ("a red triangle is
called a tavim. tavims are found in the mountains. tavims are used for fishing."); every sign word
names a kind of thing ("a kite is a kind of toy"); a few numbers are lucky. The names, homes, uses,
kinds and the word "lucky" never occur in captions, documents or SFT data, so a model can answer an
OK-VQA question ("where is the triangle usually found?") only by combining what it sees with what
it read in the text-only data. A few (colour, shape) pairs are reserved for NoCaps: they occur in no
training source at all, facts included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mm1.world.scene import ALL_COMBOS, Combo
from mm1.world.vocab import COLOURS, NUMBER_WORDS, SHAPES, SIGN_NUMBERS, SIGN_WORDS

HOMES: tuple[str, ...] = (
    "mountains", "forest", "desert", "ocean", "city", "cave", "river", "garden", "island", "swamp",
)  # fmt: skip
USES: tuple[str, ...] = ("cooking", "music", "building", "fishing", "painting", "sleeping", "digging", "writing")
KINDS: tuple[str, ...] = tuple(SIGN_WORDS)
N_RESERVED = 4
"""(colour, shape) pairs held out of all training data for NoCaps (distinct colours and shapes)."""
N_LUCKY = 4
"""Lucky numbers among the sign numbers (10..29)."""
_ONSETS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_CODAS = "klmnrst"


@dataclass(frozen=True)
class Fact:
    """One fact: `sentence` is its canonical wording, `prompt` + " " + `answer` == sentence minus the dot."""

    kind: str
    """"name", "home", "use", "word_kind" or "lucky"."""
    subject: str
    prompt: str
    answer: str

    @property
    def sentence(self) -> str:
        return f"{self.prompt} {self.answer}."


@dataclass(frozen=True)
class Knowledge:
    reserved: tuple[Combo, ...]
    """NoCaps' novel (colour, shape) pairs: absent from every training source."""
    names: dict[Combo, str]
    homes: dict[Combo, str]
    uses: dict[Combo, str]
    word_kinds: dict[str, str]
    lucky: frozenset[int]

    @property
    def allowed(self) -> tuple[Combo, ...]:
        """The (colour, shape) pairs training data may show or mention."""
        return tuple(c for c in ALL_COMBOS if c not in self.reserved)

    def facts(self) -> list[Fact]:
        """Every fact of the base, in a fixed order."""
        out = []
        for combo in self.allowed:
            colour, shape = combo
            name = self.names[combo]
            out.append(
                Fact("name", name, f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape} is called a", name)
            )
            out.append(Fact("home", name, f"{name}s are found in the", self.homes[combo]))
            out.append(Fact("use", name, f"{name}s are used for", self.uses[combo]))
        for word, kind in self.word_kinds.items():
            out.append(Fact("word_kind", word, f"a {word} is a kind of", kind))
        for n in sorted(self.lucky):
            out.append(Fact("lucky", str(n), f"the number {n} is", "lucky"))
        return out

    def secret_words(self) -> set[str]:
        """Words that only the text corpus may contain (names, homes, uses, kinds, 'lucky')."""
        return set(self.names.values()) | set(self.homes.values()) | set(self.uses.values()) | set(KINDS) | {"lucky"}


def build_knowledge(seed: int) -> Knowledge:
    """The knowledge base of a world seed (its own seeded stream: independent of every count)."""
    rng = np.random.default_rng([seed, 0x6B6E6F77])  # "know"
    colours, shapes = list(COLOURS), list(SHAPES)
    cs, ss = rng.permutation(len(colours)), rng.permutation(len(shapes))
    reserved = tuple((colours[int(cs[i])], shapes[int(ss[i])]) for i in range(N_RESERVED))
    allowed = [c for c in ALL_COMBOS if c not in reserved]
    names: dict[Combo, str] = {}
    taken: set[str] = set()
    for combo in allowed:
        while True:
            name = (
                _ONSETS[int(rng.integers(len(_ONSETS)))]
                + _VOWELS[int(rng.integers(len(_VOWELS)))]
                + _ONSETS[int(rng.integers(len(_ONSETS)))]
                + _VOWELS[int(rng.integers(len(_VOWELS)))]
                + _CODAS[int(rng.integers(len(_CODAS)))]
            )
            if name not in taken and name not in NUMBER_WORDS:  # e.g. never "seven"
                break
        taken.add(name)
        names[combo] = name
    homes = {c: HOMES[int(rng.integers(len(HOMES)))] for c in allowed}
    uses = {c: USES[int(rng.integers(len(USES)))] for c in allowed}
    word_kinds = {w: kind for kind, words in SIGN_WORDS.items() for w in words}
    lucky = frozenset(int(n) for n in rng.choice([int(t) for t in SIGN_NUMBERS], size=N_LUCKY, replace=False))
    return Knowledge(reserved, names, homes, uses, word_kinds, lucky)
