"""Helpers of the world tests: the small config and text checks (imported as `worldkit`)."""

from __future__ import annotations

import re

from mm1.config.data import WorldConfig
from mm1.world import World
from mm1.world.vocab import COLOURS, PLURALS, SHAPES

SMALL = WorldConfig(
    seed=7,
    n_captions=200,
    n_documents=50,
    n_text=120,
    n_bench_val=30,
    n_bench_train=20,
    n_sft=60,
    n_multiple_choice=30,
    n_textcore=40,
)
"""120 text documents: 40 fact documents x 5 facts cover all 126 facts of the knowledge base."""

SHAPE_RE = re.compile(r"\b(" + "|".join(sorted(set(SHAPES) | set(PLURALS.values()), key=len, reverse=True)) + r")\b")
COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")


def shapes_in(text: str) -> set[str]:
    """Shape names a text mentions (plurals mapped to the singular)."""
    back = {p: s for s, p in PLURALS.items()}
    return {back.get(m, m) for m in SHAPE_RE.findall(text.lower())}


def colours_in(text: str) -> set[str]:
    return set(COLOUR_RE.findall(text.lower()))


def training_texts(world: World) -> list[str]:
    """Every piece of text in pre-training and SFT data (captions, documents, text corpus, SFT)."""
    out = [c for s in world.captions for c in s.captions.values()]
    out += [t for d in world.documents for t in d.texts if t is not None]
    out += [t.text for t in world.texts]
    out += [text for conv in world.sft for _, text in conv.turns]
    return out


def pairs_in(text: str) -> set[tuple[str, str]]:
    """(colour, shape) pairs a text names as "colour shape" (plural shapes mapped to the singular)."""
    back = {p: s for s, p in PLURALS.items()}
    found = re.findall(COLOUR_RE.pattern + " " + SHAPE_RE.pattern, text.lower())
    return {(c, back.get(s, s)) for c, s in found}
