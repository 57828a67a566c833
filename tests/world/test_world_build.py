"""build_world: determinism, seeds, counts, the contact sheet, record shapes."""

from __future__ import annotations

import pytest
from worldkit import SMALL

from mm1.world import World, build_world, decode_image, render_samples_png
from mm1.world.benchmarks import CAPTION_BENCHMARKS, QUESTIONS_PER_IMAGE, VQA_BENCHMARKS


def test_same_config_gives_identical_records(world: World) -> None:
    again = build_world(SMALL)
    for name in ("captions", "documents", "texts", "caption_benchmarks", "vqa_benchmarks", "textcore", "sft"):
        assert getattr(again, name) == getattr(world, name), name  # dataclass equality compares the PNG bytes
    assert again.multiple_choice == world.multiple_choice
    assert [i.sha256 for i in again.images] == [i.sha256 for i in world.images]


def test_a_different_seed_gives_a_different_world(world: World) -> None:
    other = build_world(SMALL.model_copy(update={"seed": 8, "n_captions": 20, "n_documents": 5}))
    assert [c.image for c in other.captions] != [c.image for c in world.captions[:20]]
    assert [c.captions for c in other.captions] != [c.captions for c in world.captions[:20]]
    assert other.knowledge.names != world.knowledge.names
    assert other.vqa_benchmarks[0].images != world.vqa_benchmarks[0].images


def test_a_source_does_not_change_when_another_count_does(world: World) -> None:
    other = build_world(SMALL.model_copy(update={"n_captions": 20, "n_sft": 5}))
    assert other.documents == world.documents
    assert other.texts == world.texts
    assert other.textcore == world.textcore


def test_every_data_type_has_the_configured_count(world: World) -> None:
    cfg = SMALL
    assert len(world.captions) == cfg.n_captions
    assert len(world.documents) == cfg.n_documents
    assert len(world.texts) == cfg.n_text
    assert len(world.textcore) == cfg.n_textcore
    assert len(world.sft) == cfg.n_sft
    assert len(world.multiple_choice) == cfg.n_multiple_choice
    sizes = {"val": cfg.n_bench_val, "train": cfg.n_bench_train}
    assert sorted((b.name, b.split) for b in world.caption_benchmarks) == sorted(
        (n, s) for n in CAPTION_BENCHMARKS for s in sizes
    )
    for bench in world.caption_benchmarks:
        assert len(bench.images) == sizes[bench.split] == len(bench.references)
        assert all(len(refs) == cfg.captions_per_image == len(set(refs)) for refs in bench.references.values())
    assert sorted((b.name, b.split) for b in world.vqa_benchmarks) == sorted(
        (n, s) for n in VQA_BENCHMARKS for s in sizes
    )
    for bench in world.vqa_benchmarks:
        assert len(bench.images) == sizes[bench.split]
        assert len(bench.items) == sizes[bench.split] * QUESTIONS_PER_IMAGE[bench.name]
        assert all(len(item.answers) == cfg.answers_per_question for item in bench.items)
        assert {item.image_id for item in bench.items} == set(bench.images)
        assert len({item.question_id for item in bench.items}) == len(bench.items)


def test_documents_have_between_two_and_the_most_images(world: World) -> None:
    counts = [sum(im is not None for im in d.images) for d in world.documents]
    assert min(counts) >= 2 and max(counts) <= SMALL.images_per_document
    assert max(counts) >= 6  # as many as a few-shot prompt holds
    assert len(set(counts)) > 1
    assert {d.meta["format"] for d in world.documents} == {"list", "qa", "narrative", "gallery", "article"}


def test_images_are_pngs_at_render_size(world: World) -> None:
    for png in [world.captions[0].image, world.sft[0].image or world.captions[1].image, world.multiple_choice[0].image]:
        assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
        assert decode_image(png).size == (SMALL.render_size, SMALL.render_size)


def test_contact_sheet_is_a_png(world: World) -> None:
    assert render_samples_png(world)[:8] == b"\x89PNG\r\n\x1a\n"


def test_decode_image_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="cannot decode image bytes"):
        decode_image(b"\x89PNG but not really")
