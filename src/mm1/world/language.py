"""What people say about a scene: synthetic (dense) captions, web alt-text, reference captions.

- Synthetic captions (VeCap-like) are complete and correct: every visible object with size, colour,
  shape and position, the sign's text, the background and any degradation.
- Alt-text (web-like) is short and partial (one or two objects, often without colour or size),
  sometimes generic ("nice picture") and sometimes wrong (one attribute swapped, `P_ALT_WRONG`).
- Reference captions (COCO-like, for the captioning benchmarks) are short, correct, varied
  paraphrases that name every visible object's colour and shape.
Only what a viewer can see is described: see `Scene.visible` and `Scene.readable_sign`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mm1.world.scene import Combo, Scene, SceneObject
from mm1.world.vocab import COLOURS, PLURALS, SHAPES, SIZE_WORDINGS, number_word, position_phrase

P_ALT_GENERIC = 0.12
"""Share of alt-texts that say nothing about the content ("nice picture")."""
P_ALT_WRONG = 0.15
"""Share of the other alt-texts with one wrong colour or shape."""
GENERIC_ALTS: tuple[str, ...] = (
    "image", "nice picture", "photo", "untitled", "picture", "my drawing", "art", "click to enlarge",
    "thumbnail", "wallpaper", "new post", "see more",
)  # fmt: skip
ALT_TEMPLATES: tuple[str, ...] = (
    "{x}", "a {x}", "{x} on {bg}", "my {x}", "{x}!!", "drawing of a {x}", "{x} - stock image",
    "simple {x} icon", "{x} clipart", "look at this {x}", "{x} pic",
)  # fmt: skip
REF_TEMPLATES: tuple[str, ...] = (
    "{list}", "there is {list}", "{count} {shapes}: {list}", "a picture of {list}", "a {bg} background with {list}",
    "{list} on a {bg} background", "an image of {list}", "this picture shows {list}",
)  # fmt: skip


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def listing(phrases: Sequence[str]) -> str:
    """'x', 'x and y', 'x, y and z'."""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def object_phrase(obj: SceneObject, grid: int, *, size: bool = True, position: bool = True, wording: int = 0) -> str:
    """'a large red circle in the top left' (size and position optional)."""
    words = ([SIZE_WORDINGS[wording][obj.large]] if size else []) + [obj.colour, obj.shape]
    return article(" ".join(words)) + (" " + position_phrase(obj.cell, grid) if position else "")


def count_phrase(n: int, noun: str = "shape") -> str:
    """'one shape', 'three shapes'."""
    return f"{number_word(n)} {noun if n == 1 else noun + 's'}"


def synthetic_caption(scene: Scene, rng: np.random.Generator) -> str:
    """The dense, correct caption: every visible object, the sign's text, background and degradation."""
    vis = scene.visible
    listed = listing([object_phrase(o, scene.grid) for o in vis])
    bg = scene.background
    template = int(rng.integers(3))
    if template == 0:
        text = f"A picture with a {bg} background and {count_phrase(len(vis))}: {listed}."
    elif template == 1:
        text = f"An image showing {listed} on a {bg} background."
    else:
        text = f"This {bg} image contains {count_phrase(len(vis))}. There is {listed}."
    if scene.sign is not None and scene.sign_visible:
        where = position_phrase(scene.sign.cell, scene.grid)
        if scene.readable_sign is not None:
            text += f' A sign {where} says "{scene.readable_sign}".'
        else:
            text += f" A sign {where} is too blurry to read."
    if scene.degradation == "blur":
        text += " The picture is blurry."
    elif scene.degradation == "occlusion":
        text += f" A gray block covers the area {position_phrase(scene.occluded_cell, scene.grid)}."
    elif scene.degradation == "low_contrast":
        text += " The picture is faded, with low contrast."
    return text


def alt_caption(scene: Scene, rng: np.random.Generator, allowed: Sequence[Combo]) -> tuple[str, dict[str, bool]]:
    """Web-like alt-text and {"generic": ..., "wrong": ...}; a wrong one never names a pair outside `allowed`."""
    if rng.random() < P_ALT_GENERIC:
        text = GENERIC_ALTS[int(rng.integers(len(GENERIC_ALTS)))]
        if rng.random() < 0.2:
            text = f"IMG_{int(rng.integers(10000)):04d}"
        return text, {"generic": True, "wrong": False}
    vis = scene.visible
    k = 2 if len(vis) >= 2 and rng.random() < 0.3 else 1
    chosen = [vis[int(i)] for i in rng.choice(len(vis), size=k, replace=False)]
    modes = [("colour shape", "shape", "colour")[int(rng.choice(3, p=[0.6, 0.25, 0.15]))] for _ in chosen]
    combos = [o.combo for o in chosen]
    wrong = bool(rng.random() < P_ALT_WRONG)
    if wrong:
        j = int(rng.integers(k))
        colour, shape = combos[j]
        # The swapped attribute is unambiguously wrong: nothing visible has it (or has that pair).
        if modes[j] == "shape":
            options = [(colour, s) for s in SHAPES if s not in {o.shape for o in vis}]
        elif modes[j] == "colour":
            options = [(c, shape) for c in COLOURS if c not in {o.colour for o in vis}]
        else:
            options = [
                (c, shape) for c in COLOURS if (c, shape) in allowed and (c, shape) not in {o.combo for o in vis}
            ]
        wrong = bool(options)
        if options:
            combos[j] = options[int(rng.integers(len(options)))]
    phrases = []
    for obj, mode, (colour, shape) in zip(chosen, modes, combos, strict=True):
        size = SIZE_WORDINGS[int(rng.integers(2))][obj.large] + " " if rng.random() < 0.2 else ""
        phrase = {"colour shape": f"{colour} {shape}", "shape": shape, "colour": f"{colour} thing"}[mode]
        phrases.append(size + phrase)
    x = " and ".join(phrases)
    text = ALT_TEMPLATES[int(rng.integers(len(ALT_TEMPLATES)))].format(x=x, bg=scene.background)
    if scene.readable_sign is not None and rng.random() < 0.4:
        text += f", {scene.readable_sign} sign"
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    return text, {"generic": False, "wrong": wrong}


def reference_caption(scene: Scene, rng: np.random.Generator, *, read_sign: bool = False) -> str:
    """One COCO-like reference: every visible object's colour and shape, size/position optional."""
    vis = [scene.visible[int(i)] for i in rng.permutation(len(scene.visible))]
    wording, with_size, with_pos = int(rng.integers(2)), bool(rng.random() < 0.6), bool(rng.random() < 0.5)
    phrases = [object_phrase(o, scene.grid, size=with_size, position=with_pos, wording=wording) for o in vis]
    if read_sign and scene.readable_sign is not None:
        says = ("that says", "reading", "with the word")[int(rng.integers(3))]
        phrases.insert(int(rng.integers(len(phrases) + 1)), f"a sign {says} {scene.readable_sign}")
    elif scene.sign_visible and rng.random() < 0.3:
        phrases.append("a sign")
    n = len(vis)
    template = REF_TEMPLATES[int(rng.integers(len(REF_TEMPLATES)))]
    return template.format(
        list=listing(phrases), count=number_word(n), shapes="shape" if n == 1 else "shapes", bg=scene.background
    )


def reference_captions(scene: Scene, rng: np.random.Generator, k: int, *, read_sign: bool = False) -> list[str]:
    """k distinct reference captions of a scene."""
    out: list[str] = []
    for _ in range(50 * k):
        caption = reference_caption(scene, rng, read_sign=read_sign)
        if caption not in out:
            out.append(caption)
            if len(out) == k:
                return out
    raise ValueError(f"could not write {k} distinct references for {scene}")


def describe(scene: Scene, rng: np.random.Generator) -> str:
    """A short, correct description for a document: every visible object, maybe size and position."""
    wording, with_size, with_pos = int(rng.integers(2)), bool(rng.random() < 0.5), bool(rng.random() < 0.4)
    phrases = [object_phrase(o, scene.grid, size=with_size, position=with_pos, wording=wording) for o in scene.visible]
    if scene.readable_sign is not None:
        phrases.append(f"a sign that says {scene.readable_sign}")
    text = listing(phrases)
    if rng.random() < 0.3:
        text += f" on a {scene.background} background"
    return text


def plural(shape: str) -> str:
    return PLURALS[shape]
