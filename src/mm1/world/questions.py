"""Questions about a scene with their correct answers, shared by VQA benchmarks, documents and SFT.

Each `ask_*` function tries one kind of question on a scene and returns None when the scene does
not support it (e.g. "what colour is the square?" needs exactly one visible square). `ask(scene,
rng, family)` tries the kinds of a family in random order. Families:

- "vqav2": existence (yes/no), counting (number), colour / shape / position / size / background.
- "text": reading the sign (TextVQA).
- "gqa": relations between two objects ("what shape is to the left of the blue circle?").
- "okvqa": needs the knowledge base ("where is the triangle usually found?").
- "vizwiz": questions about a degraded image; "unanswerable" when the target is hidden or blurred.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mm1.world.knowledge import HOMES, KINDS, USES, Knowledge
from mm1.world.scene import RELATIONS, Combo, Scene, related, unique, unique_objects
from mm1.world.vocab import (
    BACKGROUNDS,
    COLOURS,
    PLURALS,
    POSITIONS,
    SHAPES,
    SIGN_NUMBERS,
    SIZE_WORDINGS,
    WORDS,
    number_word,
    position_name,
    position_phrase,
)

UNANSWERABLE = "unanswerable"


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    """The correct short answer ("unanswerable" where the image does not allow one)."""
    answer_type: str
    """VQAv2's answer type: "yes/no", "number" or "other"."""
    kind: str
    """Which `ask_*` wrote it (VQAItem.question_type)."""
    sentence: str
    """The answer as a full sentence (SFT responses)."""


@dataclass(frozen=True)
class Context:
    allowed: Sequence[Combo]
    """Pairs a "no" existence question may name (never NoCaps' reserved ones)."""
    knowledge: Knowledge | None = None


Asker = Callable[[Scene, np.random.Generator, Context], Question | None]


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))] if items else None


def ask_exists(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question | None:
    obj = _pick(rng, scene.visible)
    if rng.random() < 0.5 and scene.degradation != "occlusion":  # a hidden object would make "no" uncertain
        colour, shape = _pick(rng, [c for c in ctx.allowed if c not in {o.combo for o in scene.objects}])
        return Question(f"is there a {colour} {shape}?", "no", "yes/no", "exists", f"No, there is no {colour} {shape}.")
    where = position_phrase(obj.cell, scene.grid)
    return Question(f"is there a {obj.colour} {obj.shape}?", "yes", "yes/no", "exists", f"Yes, there is one {where}.")


def ask_count(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question | None:
    if scene.degradation == "occlusion":
        return None
    if rng.random() < 0.5:
        n = len(scene.objects)
        return Question("how many shapes are there?", str(n), "number", "count", f"There are {number_word(n)}.")
    shape = _pick(rng, [o.shape for o in scene.objects])
    n = sum(o.shape == shape for o in scene.objects)
    text = f"how many {PLURALS[shape]} are there?"
    return Question(text, str(n), "number", "count", f"There {'is' if n == 1 else 'are'} {number_word(n)}.")


def ask_colour(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question | None:
    obj = _pick(rng, [o for o in scene.visible if unique(scene.visible, "shape", o.shape)])
    if obj is None:
        return None
    return Question(
        f"what colour is the {obj.shape}?", obj.colour, "other", "colour", f"The {obj.shape} is {obj.colour}."
    )


def ask_shape(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question | None:
    obj = _pick(rng, [o for o in scene.visible if unique(scene.visible, "colour", o.colour)])
    if obj is None:
        return None
    text = f"what shape is the {obj.colour} object?"
    return Question(text, obj.shape, "other", "shape", f"The {obj.colour} object is a {obj.shape}.")


def ask_where(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question | None:
    obj = _pick(rng, unique_objects(scene))
    if obj is None:
        return None
    name, phrase = position_name(obj.cell, scene.grid), position_phrase(obj.cell, scene.grid)
    return Question(f"where is the {obj.colour} {obj.shape}?", name, "other", "where", f"It is {phrase}.")


def ask_size(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question | None:
    obj = _pick(rng, unique_objects(scene))
    if obj is None:
        return None
    size = SIZE_WORDINGS[0][obj.large]
    text = f"is the {obj.colour} {obj.shape} large or small?"
    return Question(text, size, "other", "size", f"The {obj.colour} {obj.shape} is {size}.")


def ask_background(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question | None:
    bg = scene.background
    return Question("what colour is the background?", bg, "other", "background", f"The background is {bg}.")


def ask_read(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question | None:
    text = scene.readable_sign
    if text is None:
        return None
    if text.isdigit() and rng.random() < 0.5:
        return Question("what number is on the sign?", text, "number", "read", f"The sign shows the number {text}.")
    q = ("what does the sign say?", "what is written on the sign?", "what word is on the sign?")[int(rng.integers(3))]
    return Question(q, text, "other", "read", f'The sign says "{text}".')


def ask_relation(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question | None:
    a, relation = _pick(rng, unique_objects(scene)), _pick(rng, list(RELATIONS))
    if a is None:
        return None
    bs = [b for b in scene.visible if b is not a and related(a, b, relation, scene.grid)]
    if len(bs) != 1:
        return None
    b, attr = bs[0], ("shape", "colour")[int(rng.integers(2))]
    value = getattr(b, attr)
    noun = "shape" if attr == "shape" else "colour is the object"
    return Question(
        f"what {noun} is {relation} the {a.colour} {a.shape}?", value, "other", f"relation_{attr}",
        f"The {b.colour} {b.shape} is {relation} the {a.colour} {a.shape}.",
    )  # fmt: skip


def ask_relation_yesno(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question | None:
    objs = unique_objects(scene)
    if len(objs) < 2:
        return None
    i, j = (int(k) for k in rng.choice(len(objs), size=2, replace=False))
    a, b = objs[i], objs[j]
    want = bool(rng.random() < 0.5)  # balance yes and no
    relations = [r for r in RELATIONS if related(a, b, r, scene.grid) == want] or list(RELATIONS)
    relation = _pick(rng, relations)
    yes = related(a, b, relation, scene.grid)
    text = f"is the {b.colour} {b.shape} {relation} the {a.colour} {a.shape}?"
    return Question(
        text, "yes" if yes else "no", "yes/no", "relation_yesno", "Yes, it is." if yes else "No, it is not."
    )


def ask_bigger(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question | None:
    objs = unique_objects(scene)
    pairs = [(a, b) for a in objs for b in objs if a is not b]
    if not pairs:
        return None
    want = bool(rng.random() < 0.5)  # balance yes and no
    pairs = [(a, b) for a, b in pairs if (a.large and not b.large) == want] or pairs
    a, b = _pick(rng, pairs)
    yes = a.large and not b.large
    text = f"is the {a.colour} {a.shape} bigger than the {b.colour} {b.shape}?"
    return Question(text, "yes" if yes else "no", "yes/no", "compare_size", "Yes, it is." if yes else "No, it is not.")


def ask_knowledge(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question | None:
    kb = ctx.knowledge
    if kb is None:
        return None
    kind = ("home", "use", "name", "word_kind", "lucky")[int(rng.choice(5, p=[0.35, 0.25, 0.2, 0.1, 0.1]))]
    sign = scene.readable_sign
    if kind == "word_kind" and sign is not None and sign in kb.word_kinds:
        kind_of = kb.word_kinds[sign]
        text = "what kind of thing does the word on the sign name?"
        return Question(text, kind_of, "other", "word_kind", f"A {sign} is a kind of {kind_of}.")
    if kind == "lucky" and sign is not None and sign.isdigit():
        yes = int(sign) in kb.lucky
        text = "is the number on the sign a lucky number?"
        return Question(text, "yes" if yes else "no", "yes/no", "lucky", f"{sign} is {'' if yes else 'not '}lucky.")
    if kind not in ("home", "use", "name"):
        return None
    by = "colour" if kind == "use" else "shape"
    obj = _pick(rng, [o for o in scene.visible if unique(scene.visible, by, getattr(o, by)) and o.combo in kb.names])
    if obj is None:
        return None
    the = f"the {obj.colour} object" if by == "colour" else f"the {obj.shape}"
    if len(scene.visible) == 1 and rng.random() < 0.5:
        the = "this object"
    if kind == "home":
        home = kb.homes[obj.combo]
        return Question(f"where is {the} usually found?", home, "other", "home", f"It is found in the {home}.")
    if kind == "use":
        use = kb.uses[obj.combo]
        return Question(f"what is {the} used for?", use, "other", "use", f"It is used for {use}.")
    name = kb.names[obj.combo]
    return Question(f"what is {the} called?", name, "other", "name", f"It is called a {name}.")


def knowledge_target(scene: Scene, kb: Knowledge) -> str | None:
    """Something in the scene an OK-VQA question can ask about ("sign" or a colour/shape), or None."""
    sign = scene.readable_sign
    if sign is not None and (sign in kb.word_kinds or sign.isdigit()):
        return "sign"
    for o in scene.visible:
        if o.combo in kb.names and (
            unique(scene.visible, "shape", o.shape) or unique(scene.visible, "colour", o.colour)
        ):
            return o.shape
    return None


def ask_blind(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question | None:
    """A VizWiz-style question about a cell or the sign; "unanswerable" when it is hidden or blurred."""
    targets = [o.cell for o in scene.objects] + ([scene.sign.cell] if scene.sign is not None else [])
    if scene.occluded_cell is not None and rng.random() < 0.5:
        targets = [scene.occluded_cell]
    cell = _pick(rng, targets)
    on_sign = scene.sign is not None and cell == scene.sign.cell
    if on_sign or rng.random() < 0.15:  # sometimes asked of an image without a (readable) sign
        sign = scene.readable_sign
        answer = sign if sign is not None else UNANSWERABLE
        return Question(
            "what does the sign say?", answer, "other", "blind_read", _blind(answer, f'It says "{answer}".')
        )
    objs = [o for o in scene.objects if o.cell == cell]
    hidden = cell == scene.occluded_cell or not objs
    attr = ("colour", "shape")[int(rng.integers(2))]
    answer = UNANSWERABLE if hidden else getattr(objs[0], attr)
    where = position_name(cell, scene.grid)
    text = f"what {attr} is the object in the {where}?" if attr == "colour" else f"what shape is in the {where}?"
    return Question(text, answer, "other", f"blind_{attr}", _blind(answer, f"It is {answer}."))


def _blind(answer: str, sentence: str) -> str:
    return "I cannot tell: that part of the image is hidden or too blurry." if answer == UNANSWERABLE else sentence


FAMILIES: dict[str, tuple[Asker, ...]] = {
    "vqav2": (ask_exists, ask_count, ask_colour, ask_shape, ask_where, ask_size, ask_background),
    "text": (ask_read,),
    "gqa": (ask_relation, ask_relation, ask_relation, ask_relation_yesno, ask_bigger),
    "okvqa": (ask_knowledge,),
    "vizwiz": (ask_blind,),
}
FALLBACK: tuple[Asker, ...] = (ask_where, ask_colour, ask_shape, ask_background, ask_count, ask_exists, ask_size)
"""Tried when no kind of a family fits the scene (e.g. relations in a one-object scene)."""


def ask(scene: Scene, rng: np.random.Generator, family: str, ctx: Context, *, strict: bool = False) -> Question | None:
    """A question of `family` about the scene (random kinds, 8 tries); then, unless `strict`, a fallback kind."""
    askers = FAMILIES[family]
    for _ in range(8):
        question = askers[int(rng.integers(len(askers)))](scene, rng, ctx)
        if question is not None:
            return question
    if strict:
        return None
    for asker in FALLBACK:
        question = asker(scene, rng, ctx)
        if question is not None:
            return question
    raise AssertionError("ask_background always answers")


def answer_domain(question: Question, grid: int, kb: Knowledge | None) -> tuple[str, ...]:
    """Every answer a question of this kind could have (distractors, annotator mistakes)."""
    kind, answer = question.kind, question.answer
    if question.answer_type == "yes/no":
        return ("yes", "no")
    if question.answer_type == "number" and kind == "count":
        return tuple(str(n) for n in range(1, 7))
    if kind in ("colour", "relation_colour", "blind_colour"):
        return tuple(COLOURS)
    if kind in ("shape", "relation_shape", "blind_shape"):
        return SHAPES
    if kind == "where":
        return POSITIONS[grid]
    if kind == "background":
        return tuple(BACKGROUNDS)
    if kind == "size":
        return ("small", "large")
    if kind in ("read", "blind_read"):
        return SIGN_NUMBERS if answer.isdigit() else WORDS
    if kb is not None and kind in ("home", "use", "name", "word_kind"):
        return {"home": HOMES, "use": USES, "name": tuple(kb.names.values()), "word_kind": KINDS}[kind]
    return (answer,)
