"""No evaluation image or scene is a training image or scene; NoCaps' pairs are absent from training."""

from __future__ import annotations

from worldkit import pairs_in, training_texts

from mm1.world import World
from mm1.world.images import sha256


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


def test_no_scene_repeats_across_training_and_evaluation(world: World) -> None:
    train = {info.scene for info in world.images if info.training}
    evals = [info.scene for info in world.images if not info.training]
    assert not train & set(evals)
    assert len(set(evals)) == len(evals)


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
