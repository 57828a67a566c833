"""No evaluation image or layout is a training image or layout; NoCaps' pairs are absent from training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from worldkit import pairs_in, training_texts

from mm1.world import World
from mm1.world.images import Canvas, sha256
from mm1.world.scene import layout_key, sample_scene


def _eval_images(world: World) -> list[bytes]:
    out = [im for b in world.caption_benchmarks for im in b.images.values()]
    out += [im for b in world.vqa_benchmarks for im in b.images.values()]
    return out + [m.image for m in world.multiple_choice if m.image is not None]


def _train_images(world: World) -> list[bytes]:
    out = [c.image for c in world.captions]
    out += [im for d in world.documents for im in d.images if im is not None]
    return out + [c.image for c in world.sft if c.image is not None]


def test_no_evaluation_image_is_a_training_image(world: World) -> None:
    train = {sha256(im) for im in _train_images(world)}
    evals = [sha256(im) for im in _eval_images(world)]
    assert not train & set(evals)
    assert len(set(evals)) == len(evals)  # and no two evaluation images are the same (val vs few-shot train)


def test_no_evaluation_scene_has_a_training_layout(world: World) -> None:
    """Compared on layout keys (the scene without its jitter floats), not on scenes: two scenes that
    differ only in sub-cell jitter are the same picture to a viewer."""
    train = {layout_key(info.scene) for info in world.images if info.training}
    evals = [layout_key(info.scene) for info in world.images if not info.training]
    assert not train & set(evals)
    assert len(set(evals)) == len(evals)


def test_layout_keys_ignore_jitter_and_see_everything_else() -> None:
    rng = np.random.default_rng(3)
    scene = sample_scene(rng, 6, text_fraction=1.0, degraded_fraction=1.0)
    shifted = replace(
        scene,
        objects=tuple(replace(o, jitter=(-o.jitter[0], 0.5)) for o in scene.objects),
        sign=replace(scene.sign, jitter=(0.9, -0.9)),
    )
    assert shifted != scene and layout_key(shifted) == layout_key(scene)
    first = scene.objects[0]
    for changed in (
        replace(scene, background="black" if scene.background != "black" else "white"),
        replace(scene, objects=(replace(first, large=not first.large), *scene.objects[1:])),
        replace(scene, objects=(replace(first, colour="red" if first.colour != "red" else "blue"), *scene.objects[1:])),
        replace(scene, sign=replace(scene.sign, text="cab" if scene.sign.text != "cab" else "bus")),
        replace(scene, degradation=None, occluded_cell=None),
    ):
        assert layout_key(changed) != layout_key(scene)


def test_the_canvas_redraws_an_evaluation_scene_with_a_training_layout() -> None:
    """A one-object, two-pair world has few layouts: training covers many, evaluation must avoid them."""
    canvas = Canvas(size=32, max_objects=1)
    combos = [("red", "circle"), ("blue", "star")]  # 2 pairs x 2 sizes x 4 cells x 3 backgrounds = 48 layouts
    for i in range(30):
        canvas.draw(np.random.default_rng(i), "train", training=True, combos=combos)
    train = {layout_key(info.scene) for info in canvas.log}
    assert len(train) < 30  # training itself repeats layouts (with different jitter)
    for i in range(10):
        scene, _ = canvas.draw(np.random.default_rng(100 + i), "eval", training=False, combos=combos)
        assert layout_key(scene) not in train
    assert canvas.redrawn > 0


def test_the_image_log_covers_every_record_image(world: World) -> None:
    logged = {info.sha256: info.training for info in world.images}
    assert all(logged[sha256(im)] for im in _train_images(world))
    assert not any(logged[sha256(im)] for im in _eval_images(world))


def test_nocaps_pairs_never_occur_in_training_data(world: World) -> None:
    reserved = set(world.knowledge.reserved)
    assert reserved
    for info in world.images:
        if info.training:
            assert not {o.combo for o in info.scene.objects} & reserved
    for text in training_texts(world):
        assert not pairs_in(text) & reserved, text
