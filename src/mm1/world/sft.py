"""Supervised fine-tuning data (LLaVA-style conversations) and multiple-choice evaluation items.

Conversations are of four kinds: "describe" (the dense synthetic caption), "answer" (one question,
answered in a sentence or, after "Answer the question using a single word or phrase.", in a word),
"multi" (two or three questions) and "text" (no image: counting and comparing numbers). They never
use the knowledge base. Multiple-choice items (MMBench-like, evaluation only) ask about colour,
shape, count, position, the sign's text or the knowledge base, with 4 choices.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mm1.data.records import Conversation, MultipleChoice
from mm1.world.language import synthetic_caption
from mm1.world.questions import Context, Question, answer_domain, ask, ask_count
from mm1.world.scene import Scene
from mm1.world.vocab import WORDS, number_word

Draw = Callable[[np.random.Generator], tuple[Scene, bytes]]
DESCRIBE_PROMPTS: tuple[str, ...] = (
    "Describe the image in detail.", "What is in this picture?", "Write a detailed caption for this image.",
    "Describe everything you see.",
)  # fmt: skip
SHORT = "Answer the question using a single word or phrase."
SFT_KINDS: tuple[str, ...] = ("describe", "answer", "multi", "text")
SFT_WEIGHTS: tuple[float, ...] = (0.35, 0.35, 0.2, 0.1)
MC_FAMILIES: tuple[str, ...] = ("vqav2", "text", "okvqa", "gqa")


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _question(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question:
    family = ("vqav2", "vqav2", "text", "gqa", "vizwiz")[int(rng.integers(5))]
    if family == "vizwiz" and scene.degradation is None:
        family = "vqav2"
    return ask(scene, rng, family, ctx)


def make_conversation(conv_id: str, rng: np.random.Generator, draw: Draw, ctx: Context) -> Conversation:
    """One SFT conversation; the first human turn starts with "<image>\\n" when there is an image."""
    kind = SFT_KINDS[int(rng.choice(len(SFT_KINDS), p=SFT_WEIGHTS))]
    if kind == "text":
        return Conversation(id=conv_id, image=None, turns=_text_turns(rng))
    scene, png = draw(rng)
    turns: list[tuple[str, str]] = []
    if kind == "describe":
        turns += [
            ("human", DESCRIBE_PROMPTS[int(rng.integers(len(DESCRIBE_PROMPTS)))]),
            ("gpt", synthetic_caption(scene, rng)),
        ]
    else:
        asked: set[str] = set()
        for _ in range(1 if kind == "answer" else int(rng.integers(2, 4))):
            q = _question(scene, rng, ctx)
            if q.text in asked:
                continue
            asked.add(q.text)
            if rng.random() < 0.5:
                turns += [("human", f"{_cap(q.text)}\n{SHORT}"), ("gpt", q.answer)]
            else:
                turns += [("human", _cap(q.text)), ("gpt", q.sentence)]
    turns[0] = ("human", "<image>\n" + turns[0][1])
    return Conversation(id=conv_id, image=png, turns=tuple(turns))


def _text_turns(rng: np.random.Generator) -> tuple[tuple[str, str], ...]:
    if rng.random() < 0.5:
        words = [WORDS[int(i)] for i in rng.integers(len(WORDS), size=int(rng.integers(2, 7)))]
        n = number_word(len(words))
        return (("human", f"How many words are in this list: {' '.join(words)}?"), ("gpt", f"There are {n} words."))
    a, b = (int(x) for x in rng.choice(100, size=2, replace=False))
    big, small = max(a, b), min(a, b)
    return (("human", f"Which number is bigger, {a} or {b}?"), ("gpt", f"{big} is bigger than {small}."))


def make_multiple_choice(mc_id: str, rng: np.random.Generator, draw: Draw, ctx: Context) -> MultipleChoice:
    """One 4-way multiple-choice question about a fresh (evaluation) image."""
    scene, png = draw(rng)
    for attempt in range(101):
        family = MC_FAMILIES[int(rng.integers(len(MC_FAMILIES)))]
        q = ask(scene, rng, family, ctx, strict=True) if attempt < 100 else ask_count(scene, rng, ctx)
        if q is None:
            continue
        domain = [d for d in answer_domain(q, scene.grid, ctx.knowledge) if d != q.answer]
        if len(domain) >= 3:
            break
    distractors = [domain[int(i)] for i in rng.choice(len(domain), size=3, replace=False)]
    answer = int(rng.integers(4))
    choices = distractors[:answer] + [q.answer] + distractors[answer:]
    return MultipleChoice(id=mc_id, image=png, question=_cap(q.text), choices=tuple(choices), answer=answer)
