"""Interleaved documents: OBELICS layout, and the text about each image describes that image."""

from __future__ import annotations

import re

from worldkit import colours_in, shapes_in

from mm1.world import World
from mm1.world.documents import PROSE
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


def test_every_qa_answer_ends_with_a_newline(world: World) -> None:
    qa_docs = [d for d in world.documents if d.meta["format"] == "qa"]
    faq = [t.text for t in world.texts if t.meta["kind"] == "faq"]
    assert qa_docs and faq
    for doc in qa_docs:
        assert all(doc.texts[p].endswith("\n") for _, p in doc.meta["about"])
    for text in faq:
        lines = text.split("\n")
        assert lines[-1] == "" and all(re.match(r"(Question|Q): .+\? (Answer|A): \S", x) for x in lines[1:-1]), text


def test_documents_hold_general_prose_between_images(world: World) -> None:
    about = {(d.id, p) for d in world.documents for _, p in d.meta["about"]}
    prose = [t for d in world.documents for p, t in enumerate(d.texts) if _prose_run(t) and (d.id, p) not in about]
    assert len(prose) > len(world.documents) // 2


def _prose_run(text: str | None) -> bool:
    """Whether a text item is a run of PROSE sentences."""
    return text is not None and all(s + "." in PROSE for s in text.removesuffix(".").split(". "))


def test_a_newline_terminator_survives_tokenisation(tmp_path) -> None:
    from mm1.config import TokenizerConfig
    from mm1.data.packing import PackLayout, encode_text
    from mm1.data.tokenizer import TextTokenizer, train_tokenizer

    texts = ["Question: what colour is it? Answer: blue\n", "Q: how many? A: 3\n"] * 20
    tok = TextTokenizer(train_tokenizer(TokenizerConfig(vocab_size=300), texts, tmp_path / "tok.json"))
    layout = PackLayout.from_tokenizer(tok, 64, 4, 4)
    ids = encode_text(tok, "Question: what colour is it? Answer: blue\n", layout)
    assert tok._tok.decode(list(ids)).endswith("blue\n")
