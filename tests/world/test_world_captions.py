"""Caption pairs: synthetic captions are complete and correct, alt-texts short, partial, sometimes wrong."""

from __future__ import annotations

import re

import numpy as np
from worldkit import colours_in, pairs_in, shapes_in

from mm1.world import World
from mm1.world.language import (
    ALT_PREFIXES,
    ALT_SUFFIXES,
    MAX_NAMED,
    P_ALT_WRONG,
    alt_caption,
    reference_captions,
    synthetic_caption,
)
from mm1.world.scene import ALL_COMBOS, Scene, sample_scene
from mm1.world.vocab import position_phrase


def test_synthetic_captions_name_every_visible_object_and_the_sign(world: World) -> None:
    for sample in world.captions:
        scene, text = world.scene_of(sample.image), sample.captions["synthetic"]
        for obj in scene.visible:
            assert f"{obj.colour} {obj.shape} {position_phrase(obj.cell, scene.grid)}" in text, (obj, text)
        assert colours_in(text) == {o.colour for o in scene.visible}
        assert shapes_in(text) == {o.shape for o in scene.visible}
        assert scene.background in text
        if scene.readable_sign is not None:
            assert f'"{scene.readable_sign}"' in text
        if scene.degradation == "blur":
            assert "blurry" in text


def alt_is_true(alt: str, scene: Scene) -> bool:
    """Every colour, shape and "colour shape" pair the alt-text names is visible."""
    return (
        colours_in(alt) <= {o.colour for o in scene.visible}
        and shapes_in(alt) <= {o.shape for o in scene.visible}
        and pairs_in(alt) <= {o.combo for o in scene.visible}
    )


def test_alt_texts_are_web_length_partial_noisy_and_sometimes_wrong(world: World) -> None:
    alts = [s.captions["alt"] for s in world.captions]
    syns = [s.captions["synthetic"] for s in world.captions]
    alt_words = np.mean([len(a.split()) for a in alts])
    assert 7 <= alt_words <= 13 and alt_words * 2 < np.mean([len(s.split()) for s in syns])
    boilerplate = [p for p in ALT_PREFIXES + ALT_SUFFIXES if p]
    noisy = sum(any(p in a.lower() for p in boilerplate) for a in alts)
    assert 0.3 < noisy / len(alts) < 0.95  # page boilerplate in many alt-texts, not in all
    assert len(set(alts)) > len(alts) // 2  # varied phrasing
    generic = [s for s in world.captions if s.meta["alt_generic"]]
    assert generic and all(not colours_in(s.captions["alt"]) and not shapes_in(s.captions["alt"]) for s in generic)
    for sample in world.captions:
        assert alt_is_true(sample.captions["alt"], world.scene_of(sample.image)) != sample.meta["alt_wrong"], sample
    wrong = sum(s.meta["alt_wrong"] for s in world.captions)
    assert 0.3 * P_ALT_WRONG < wrong / len(alts) < 2 * P_ALT_WRONG
    visible_shapes = [{o.shape for o in world.scene_of(s.image).visible} for s in world.captions]
    partial = sum(len(shapes_in(a)) < len(v) for a, v in zip(alts, visible_shapes, strict=True))
    assert partial > len(alts) // 3


def test_wrong_alt_texts_are_frequent_and_never_name_a_reserved_pair() -> None:
    rng = np.random.default_rng(0)
    allowed = ALL_COMBOS[1:]  # pretend the first pair is reserved
    n_wrong = 0
    for _ in range(400):
        scene = sample_scene(rng, 3, combos=allowed)
        alt, flags = alt_caption(scene, rng, allowed)
        assert alt_is_true(alt, scene) != flags["wrong"], (alt, scene)
        assert f"{ALL_COMBOS[0][0]} {ALL_COMBOS[0][1]}" not in alt.lower()
        n_wrong += flags["wrong"]
    assert 0.08 < n_wrong / 400 < 0.2


def test_reference_captions_are_distinct_and_name_the_salient_objects() -> None:
    rng = np.random.default_rng(1)
    for _ in range(80):
        scene = sample_scene(rng, 6, text_fraction=0.5)
        refs = reference_captions(scene, rng, 10, read_sign=True)
        assert len(set(refs)) == 10
        vis = scene.visible
        large = [o for o in vis if o.large]
        must = vis if len(vis) <= MAX_NAMED else large if len(large) <= MAX_NAMED else []
        for ref in refs:
            assert colours_in(ref) <= {o.colour for o in vis} and shapes_in(ref) <= {o.shape for o in vis}
            assert {o.colour for o in must} <= colours_in(ref) and {o.shape for o in must} <= shapes_in(ref)
            if len(vis) > MAX_NAMED:
                assert "smaller shape" in ref
            if scene.readable_sign is not None:
                assert re.search(rf"\b{scene.readable_sign}\b", ref)


def test_synthetic_caption_mentions_degradations() -> None:
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(100):
        scene = sample_scene(rng, 3, text_fraction=0.5, degradation="any")
        text = synthetic_caption(scene, rng)
        seen.add(scene.degradation)
        expected = {"blur": "blurry", "occlusion": "gray block", "low_contrast": "low contrast"}[scene.degradation]
        assert expected in text
        if scene.sign is not None and scene.degradation == "blur" and scene.sign_visible:
            assert "too blurry to read" in text and f'"{scene.sign.text}"' not in text
    assert seen == {"blur", "occlusion", "low_contrast"}
