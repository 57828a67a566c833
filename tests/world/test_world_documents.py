"""Interleaved documents: OBELICS layout, and the text about each image describes that image."""

from __future__ import annotations

import re

from worldkit import colours_in, shapes_in

from mm1.world import World
from mm1.world.vocab import WORDS


def test_the_text_next_to_each_image_describes_that_image(world: World) -> None:
    checked = 0
    for doc in world.documents:
        assert len(doc.texts) == len(doc.images)
        pairs = doc.meta["about"]
        assert [p for p, _ in pairs] == [i for i, im in enumerate(doc.images) if im is not None]
        for image_pos, text_pos in pairs:
            scene = world.scene_of(doc.images[image_pos])
            text = doc.texts[text_pos]
            assert text is not None
            colours, shapes = colours_in(text), shapes_in(text)
            assert colours <= {o.colour for o in scene.visible}, (text, scene)
            assert shapes <= {o.shape for o in scene.visible}, (text, scene)
            words = set(re.findall(r"[a-z]+", text.lower())) & set(WORDS)
            assert words <= {scene.readable_sign}, (text, scene)
            backgrounds = set(re.findall(r"\b(white|gray|black)\b(?! block)", text.lower()))
            assert backgrounds <= {scene.background}, (text, scene)
            assert (
                colours
                or shapes
                or words
                or backgrounds
                or re.search(r"\d|yes|large|small|left|right|top|bottom|center", text)
            )
            checked += 1
    assert checked >= len(world.documents)


def test_descriptive_formats_name_every_visible_object(world: World) -> None:
    for doc in world.documents:
        if doc.meta["format"] in ("list", "narrative", "gallery", "article"):
            for image_pos, text_pos in doc.meta["about"]:
                scene = world.scene_of(doc.images[image_pos])
                assert shapes_in(doc.texts[text_pos]) == {o.shape for o in scene.visible}
                assert colours_in(doc.texts[text_pos]) == {o.colour for o in scene.visible}


def test_a_document_keeps_one_format(world: World) -> None:
    for doc in world.documents:
        texts = [t for t in doc.texts if t is not None]
        if doc.meta["format"] == "list":
            items = [t for t in texts if t.startswith("Item ")]
            assert items == [f"Item {k + 1}:" for k in range(len(doc.meta["about"]))]
        elif doc.meta["format"] == "qa":
            styles = {t.split()[0] for _, p in doc.meta["about"] for t in [doc.texts[p]]}
            assert len(styles) == 1 or not styles & {"Q:", "Question:"}
        elif doc.meta["format"] == "article":
            assert [t.split(":")[0] for t in texts if t.startswith("Figure") and ":" in t] == [
                f"Figure {k + 1}" for k in range(len(doc.meta["about"]))
            ]
