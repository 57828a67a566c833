"""What people say about a scene: synthetic (dense) captions, web alt-text, reference captions.

- Synthetic captions (VeCap-like) are complete and correct: every visible object with size, colour,
  shape and position, the sign's text, the background and any degradation.
- Alt-text (web-like) is partial and noisy: one to three objects wrapped in page boilerplate
  ("stock photo of ... - free download"), sometimes generic ("nice picture") and sometimes wrong (one
  attribute swapped, `P_ALT_WRONG`).
- Reference captions (COCO-like, for the captioning benchmarks) are short, correct, varied
  paraphrases that name the salient objects' colour and shape (every object in scenes of up to three).
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
ALT_PREFIXES: tuple[str, ...] = (
    "", "", "", "image of", "photo of", "picture of", "stock photo of", "illustration of", "close up of",
    "vector illustration of", "a drawing of", "cute", "simple", "my favourite",
)  # fmt: skip
"""Boilerplate that web alt-text opens with (CC3M-style hypernyms were not applied: this is raw alt-text)."""
ALT_SUFFIXES: tuple[str, ...] = (
    "", "", "stock image", "free download", "hd wallpaper", "clipart png", "royalty free vector", "high quality",
    "for kids", "icon set", "flat design", "premium vector", "print poster", "on sale now", "new collection",
    "graphic design element", "transparent png", "2019", "best ideas", "photo by my friend",
)  # fmt: skip
"""Words about the page or the file, not the picture (none names a shape, colour, sign word or fact)."""
REF_TEMPLATES: tuple[str, ...] = (
    "{list}", "there is {list}", "{count} {shapes}: {list}", "a picture of {list}", "a {bg} background with {list}",
    "{list} on a {bg} background", "an image of {list}", "this picture shows {list}",
)  # fmt: skip


MAX_NAMED = 3
"""References name every visible object up to this many; beyond it only the salient (large) ones."""


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
    """Web-like alt-text and {"generic": ..., "wrong": ...}; a wrong one never names a pair outside `allowed`.

    Content-bearing but partial and noisy: one to three of the visible objects (colour and shape, or
    only one of them, sometimes size or position), maybe the background and the sign's text, wrapped
    in page boilerplate ("stock photo of ... - free download")."""
    if rng.random() < P_ALT_GENERIC:
        text = GENERIC_ALTS[int(rng.integers(len(GENERIC_ALTS)))]
        if rng.random() < 0.2:
            text = f"IMG_{int(rng.integers(10000)):04d}"
        return text, {"generic": True, "wrong": False}
    vis = scene.visible
    k = min(len(vis), 1 + int(rng.choice(3, p=[0.4, 0.4, 0.2])))
    chosen = [vis[int(i)] for i in rng.choice(len(vis), size=k, replace=False)]
    modes = [("colour shape", "shape", "colour")[int(rng.choice(3, p=[0.7, 0.2, 0.1]))] for _ in chosen]
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
        size = SIZE_WORDINGS[int(rng.integers(2))][obj.large] + " " if rng.random() < 0.3 else ""
        phrase = size + {"colour shape": f"{colour} {shape}", "shape": shape, "colour": f"{colour} thing"}[mode]
        if rng.random() < 0.2:
            phrase += " " + position_phrase(obj.cell, scene.grid)
        phrases.append(phrase)
    text = " ".join(p for p in (_pick(ALT_PREFIXES, rng), listing(phrases)) if p)
    if rng.random() < 0.4:
        text += f" on {scene.background}"
    if scene.readable_sign is not None and rng.random() < 0.5:
        text += (f" with a {scene.readable_sign} sign", f", sign says {scene.readable_sign}")[int(rng.integers(2))]
    suffix = _pick(ALT_SUFFIXES, rng)
    if suffix:
        text += (" - ", " | ", " ")[int(rng.integers(3))] + suffix
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    return text, {"generic": False, "wrong": wrong}


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def reference_caption(scene: Scene, rng: np.random.Generator, *, read_sign: bool = False) -> str:
    """One COCO-like reference: the salient objects' colour and shape, size/position optional. With up to
    MAX_NAMED visible objects every one is named; beyond that the large ones (COCO captions name the
    salient objects, not every one), topped up with small ones to two, and "and N smaller shapes"."""
    vis = [scene.visible[int(i)] for i in rng.permutation(len(scene.visible))]
    rest = 0
    if len(vis) > MAX_NAMED:
        named = [o for o in vis if o.large][:MAX_NAMED]
        named += [o for o in vis if not o.large][: max(0, 2 - len(named))]
        rest, vis = len(vis) - len(named), named
    wording, with_size, with_pos = int(rng.integers(2)), bool(rng.random() < 0.6), bool(rng.random() < 0.5)
    phrases = [object_phrase(o, scene.grid, size=with_size, position=with_pos, wording=wording) for o in vis]
    if read_sign and scene.readable_sign is not None:
        says = ("that says", "reading", "with the word")[int(rng.integers(3))]
        phrases.insert(int(rng.integers(len(phrases) + 1)), f"a sign {says} {scene.readable_sign}")
    elif scene.sign_visible and rng.random() < 0.3:
        phrases.append("a sign")
    if rest:
        phrases.append(f"{number_word(rest)} smaller {'shape' if rest == 1 else 'shapes'}")
    n = len(vis) + rest
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
