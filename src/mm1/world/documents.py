"""Interleaved image-text documents (OBELICS layout) whose text refers to the images in it.

A document keeps one format throughout, so that a model can learn to continue a format from the
examples before it (few-shot in-context learning):

- "list":      "Item 1:" <img> "A red circle and a small blue square."  "Item 2:" <img> ...
- "qa":        ["Questions about pictures."] <img> "Q: what colour is the square? A: blue\n"  <img> "Q: ... A: ...\n"
  (one Q/A style per doc; every answer ends with a newline)
- "narrative": "First we saw" <img> "It shows ..."  "Then came" <img> "It shows ..."
- "gallery":   <img> <dense caption>  <img> <dense caption>
- "article":   "Here are three pictures of shapes." <img> "Figure 1: ..." <img> "Figure 2: ..." "Figure 2 has
  more shapes than figure 1."

Between the images (and before the first, after the last) a document may hold general prose
(`PROSE`), as web pages do: sentences about shapes, colours, numbers or the page, not about an image.
The text about each image is correct and specific to it; `meta["about"]` lists the pairs
[image position, position of the text about it]. Documents never state knowledge-base facts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mm1.data.records import InterleavedDoc
from mm1.world.language import describe, synthetic_caption
from mm1.world.questions import Context, Question, ask, ask_background
from mm1.world.scene import Scene
from mm1.world.vocab import number_word

FORMATS: tuple[str, ...] = ("list", "qa", "narrative", "gallery", "article")
QA_STYLES: tuple[str, ...] = ("Q: {q} A: {a}\n", "Question: {q} Answer: {a}\n", "{q} {a}\n")
"""Every answer ends with a newline: the terminator the evaluation's VQA template uses too."""
P_PROSE = 0.5
"""Chance of a run of general prose before the first image, between two images and after the last."""
PROSE: tuple[str, ...] = (
    "A triangle has three corners.", "A square has four equal sides.", "A circle has no corners.",
    "A star has five points.", "A diamond is a square standing on one corner.", "A cross has four arms.",
    "Red, orange and yellow are warm colours.", "Green, blue and purple are cool colours.",
    "Mixing blue and yellow gives green.", "Mixing red and yellow gives orange.", "Mixing red and blue gives purple.",
    "Shapes are easier to draw with a ruler.", "I made these last weekend.", "More pictures will follow soon.",
    "Thanks for reading this page.", "Leave a comment below if you like them.", "This page was updated last week.",
    "Some of these took a long time.", "My friends helped me choose the colours.", "Feel free to share this post.",
    "Small shapes are hard to see from far away.", "Big shapes stand out on a dark page.",
    "Two plus two is four.", "Ten comes after nine.", "Twelve is more than eight.",
)  # fmt: skip
"""General prose of a web page: about the world or the page, never about one of its images (no sign
word, no knowledge-base fact, no colour next to a shape)."""
NARRATIVE: tuple[str, ...] = ("First we saw", "Then came", "Next there was", "After that we found", "Later we saw")
Draw = Callable[[np.random.Generator], tuple[Scene, bytes]]
"""Draws one training image: (scene, PNG bytes)."""


def make_document(doc_id: str, rng: np.random.Generator, n_images: int, draw: Draw, ctx: Context) -> InterleavedDoc:
    """One document of `n_images` images in a random format."""
    fmt = FORMATS[int(rng.integers(len(FORMATS)))]
    items: list[str | bytes] = []
    about: list[list[int]] = []
    counts: list[int] = []
    style = QA_STYLES[int(rng.integers(len(QA_STYLES)))]

    def image_then(text: str, png: bytes) -> None:
        items.append(png)
        items.append(text)
        about.append([len(items) - 2, len(items) - 1])

    if fmt == "list":
        items.append(("My shapes:", "A list of pictures.", "Things I drew today:", "Collection.")[int(rng.integers(4))])
    elif fmt == "qa" and rng.random() < 0.5:
        items.append("Questions about pictures.")
    elif fmt == "article":
        items.append(
            "Here is one picture of shapes."
            if n_images == 1
            else f"Here are {number_word(n_images)} pictures of shapes."
        )
    for i in range(n_images):
        _maybe_prose(items, rng)
        scene, png = draw(rng)
        counts.append(len(scene.visible))
        if fmt == "list":
            items.append(f"Item {i + 1}:")
            image_then(_sentence(describe(scene, rng)), png)
        elif fmt == "qa":
            q = _answerable_question(scene, rng, ctx)
            image_then(style.format(q=_sentence(q.text, end=""), a=q.answer), png)
        elif fmt == "narrative":
            items.append("Finally," if i == n_images - 1 and i > 0 else NARRATIVE[min(i, len(NARRATIVE) - 1)])
            image_then(f"It shows {describe(scene, rng)}.", png)
        elif fmt == "gallery":
            image_then(synthetic_caption(scene, rng), png)
        else:
            image_then(f"Figure {i + 1}: {describe(scene, rng)}.", png)
            if i > 0:
                more = "more" if counts[i] > counts[i - 1] else "fewer" if counts[i] < counts[i - 1] else "as many"
                than = "as" if more == "as many" else "than"
                items.append(f"Figure {i + 1} has {more} shapes {than} figure {i}.")
    _maybe_prose(items, rng)
    texts = tuple(item if isinstance(item, str) else None for item in items)
    images = tuple(item if isinstance(item, bytes) else None for item in items)
    return InterleavedDoc(id=doc_id, texts=texts, images=images, meta={"format": fmt, "about": about})


def _maybe_prose(items: list[str | bytes], rng: np.random.Generator) -> None:
    """With chance P_PROSE, one to three sentences of general prose as a text item of their own."""
    if rng.random() < P_PROSE:
        picks = rng.choice(len(PROSE), size=int(rng.integers(1, 4)), replace=False)
        items.append(" ".join(PROSE[int(k)] for k in picks))


def _answerable_question(scene: Scene, rng: np.random.Generator, ctx: Context) -> Question:
    """A question about what the image shows (never a "no" about an absent object, never knowledge)."""
    for _ in range(100):
        family = ("vqav2", "vqav2", "text", "gqa")[int(rng.integers(4))]
        q = ask(scene, rng, family, ctx, strict=True)
        if q is not None and not (q.kind == "exists" and q.answer == "no"):
            return q
    return ask_background(scene, rng, ctx)


def _sentence(text: str, end: str = ".") -> str:
    return text[0].upper() + text[1:] + end
