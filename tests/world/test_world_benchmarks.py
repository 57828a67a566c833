"""Benchmarks: references and human answers as the real datasets have them."""

from __future__ import annotations

import re

from worldkit import SMALL

from mm1.world import World
from mm1.world.questions import UNANSWERABLE


def majority(answers: tuple[str, ...]) -> str:
    return max(set(answers), key=answers.count)


def test_textcaps_references_mention_the_sign(world: World) -> None:
    bench = world.caption_benchmark("textcaps")
    for image_id, refs in bench.references.items():
        word = world.scene_of(bench.images[image_id]).readable_sign
        assert word is not None
        assert all(re.search(rf"\b{word}\b", ref) for ref in refs), (word, refs)


def test_nocaps_images_show_a_reserved_pair_and_coco_images_do_not(world: World) -> None:
    reserved = set(world.knowledge.reserved)
    for image in world.caption_benchmark("nocaps").images.values():
        assert {o.combo for o in world.scene_of(image).objects} & reserved
    for image in world.caption_benchmark("coco").images.values():
        assert not {o.combo for o in world.scene_of(image).objects} & reserved


def test_vqa_answers_agree_with_a_few_synonyms_and_mistakes(world: World) -> None:
    n = SMALL.answers_per_question
    noisy = 0
    for bench in world.vqa_benchmarks:
        for item in bench.items:
            assert len(item.answers) == n
            truth = majority(item.answers)
            assert item.answers.count(truth) >= min(3, n)
            noisy += len(set(item.answers)) > 1
            assert item.answer_type in ("yes/no", "number", "other")
    total = sum(len(b.items) for b in world.vqa_benchmarks)
    assert 0.2 * total < noisy < 0.95 * total


def test_vqav2_has_every_answer_type_and_correct_answers(world: World) -> None:
    bench = world.vqa_benchmark("vqav2")
    assert {i.answer_type for i in bench.items} == {"yes/no", "number", "other"}
    for item in bench.items:
        scene = world.scene_of(bench.images[item.image_id])
        truth = majority(item.answers)
        if item.question_type == "count" and item.question == "how many shapes are there?":
            assert truth == str(len(scene.objects))
        if item.question_type == "colour":
            shape = re.match(r"what colour is the (\w+)\?", item.question).group(1)
            assert truth == next(o.colour for o in scene.visible if o.shape == shape)
        if item.question_type == "background":
            assert truth == scene.background


def test_textvqa_answers_are_the_sign(world: World) -> None:
    bench = world.vqa_benchmark("textvqa")
    for item in bench.items:
        assert majority(item.answers) == world.scene_of(bench.images[item.image_id]).readable_sign


def test_vizwiz_images_are_degraded_and_some_questions_unanswerable(world: World) -> None:
    bench = world.vqa_benchmark("vizwiz")
    assert all(world.scene_of(im).degradation is not None for im in bench.images.values())
    unanswerable = [i for i in bench.items if majority(i.answers) == UNANSWERABLE]
    assert 0.1 * len(bench.items) < len(unanswerable) < 0.8 * len(bench.items)
    for item in unanswerable:
        scene = world.scene_of(bench.images[item.image_id])
        assert scene.degradation in ("blur", "occlusion") or scene.sign is None or item.question_type != "blind_read"


def test_gqa_asks_about_relations(world: World) -> None:
    bench = world.vqa_benchmark("gqa")
    assert all(len(world.scene_of(im).visible) >= 2 for im in bench.images.values())
    kinds = {i.question_type for i in bench.items}
    assert kinds & {"relation_shape", "relation_colour"} and "relation_yesno" in kinds
