"""The closed vocabulary of the MM1 world: shapes, colours, backgrounds, positions, sign words, numbers.

Every word a scene can put into an image or a caption is listed here, so tests and readers can check
text against it. The knowledge base (`knowledge`) adds its own disjoint vocabulary (made-up names,
homes, uses, word kinds) that only the text corpus uses.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 20),
    "green": (30, 170, 40),
    "blue": (30, 80, 230),
    "purple": (150, 40, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (150, 150, 150),
    "black": (15, 15, 15),
}
SIGN_WORDS: dict[str, tuple[str, ...]] = {
    "animal": ("cat", "dog", "owl", "cow"),
    "food": ("egg", "jam", "pie", "tea"),
    "weather": ("fog", "sun", "ice", "dew"),
    "tool": ("axe", "pin", "hoe", "rod"),
    "vehicle": ("bus", "car", "van", "cab"),
}
"""The 20 words a sign can show, by the kind of thing they name (the kind is knowledge: corpus only).
All have three letters, as every number has two digits: a sign is read from its glyphs, not guessed
from the width of its text, and three letters fit a 3x3 cell at the font size of `render.TEXT_EM`."""
WORDS: tuple[str, ...] = tuple(w for words in SIGN_WORDS.values() for w in words)
SIGN_NUMBERS: tuple[str, ...] = tuple(str(n) for n in range(10, 30))
"""A sign shows one of the 20 words or a number 10..29: 40 texts, a vocabulary small enough that each
is seen often in training (text in web images is dominated by a few frequent words and numbers)."""
SIGN_TEXTS: tuple[str, ...] = WORDS + SIGN_NUMBERS

DEGRADATIONS: tuple[str, ...] = ("blur", "occlusion", "low_contrast")
"""Blur (signs become unreadable), a grey block over one grid cell, or faded colours."""

SIZE_WORDINGS: tuple[tuple[str, str], ...] = (("small", "large"), ("little", "big"))
"""Paraphrases of (small, large); one wording is used throughout a caption."""
POSITIONS: dict[int, tuple[str, ...]] = {
    2: ("top left", "top right", "bottom left", "bottom right"),
    3: (
        "top left", "top", "top right",
        "left", "center", "right",
        "bottom left", "bottom", "bottom right",
    ),
}  # fmt: skip
"""Position names by grid side, in reading order of the cells."""
NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)  # fmt: skip
PLURALS: dict[str, str] = {s: s + ("es" if s.endswith("ss") else "s") for s in SHAPES}


def position_name(cell: int, grid: int) -> str:
    """'top left', 'center', ... for a cell of a grid x grid layout."""
    return POSITIONS[grid][cell]


def position_phrase(cell: int, grid: int) -> str:
    """'in the top left', 'at the top', 'on the left', 'in the center'."""
    name = position_name(cell, grid)
    if name in ("top", "bottom"):
        return f"at the {name}"
    if name in ("left", "right"):
        return f"on the {name}"
    return f"in the {name}"


def number_word(n: int) -> str:
    """'three' for 3 (up to twenty), digits beyond."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def grid_side(max_objects: int) -> int:
    """Side of the placement grid: 2x2 holds up to 3 objects and a sign, 3x3 up to 6 and a sign (and empty
    cells: 9 cells are more than a 2x2 grid of image tokens can keep apart)."""
    return 2 if max_objects <= 3 else 3
