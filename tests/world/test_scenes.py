"""The synthetic MM1 world: determinism, scene bounds, captions that describe the image, file format."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mm1.config.data import WorldConfig
from mm1.world.scenes import (
    COLOURS,
    POSITIONS_2X2,
    SHAPES,
    SIZE_WORDINGS,
    SPLIT_COLUMNS,
    decode_image,
    generate_world,
    object_box,
    read_split,
    render_scene,
    sample_captions,
    sample_scene,
)

SMALL = WorldConfig(seed=3, n_train=24, n_test=8, image_size=32, max_objects=2, captions_per_image=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_world(SMALL, tmp_path_factory.mktemp("world"))


def test_same_config_gives_identical_bytes(world: dict[str, Path], tmp_path: Path) -> None:
    again = generate_world(SMALL, tmp_path)
    for split in ("train", "test"):
        assert again[split].read_bytes() == world[split].read_bytes()


def test_different_seed_gives_a_different_world(world: dict[str, Path], tmp_path: Path) -> None:
    other = generate_world(SMALL.model_copy(update={"seed": 4}), tmp_path)
    for split in ("train", "test"):
        a, b = read_split(world[split]), read_split(other[split])
        assert a["image"].to_list() != b["image"].to_list()
        assert a["caption"].to_list() != b["caption"].to_list()


def test_test_split_does_not_depend_on_n_train(world: dict[str, Path], tmp_path: Path) -> None:
    bigger = generate_world(SMALL.model_copy(update={"n_train": 50}), tmp_path)
    assert read_split(bigger["test"]).equals(read_split(world["test"]))
    assert read_split(bigger["train"]).height == 50


def test_split_files_have_the_documented_columns(world: dict[str, Path]) -> None:
    for split, n in (("train", SMALL.n_train), ("test", SMALL.n_test)):
        df = read_split(world[split])
        assert dict(df.schema) == SPLIT_COLUMNS
        assert df["id"].to_list() == [f"{split}-{i:06d}" for i in range(n)]
        assert df["caption"].to_list() == [refs[0] for refs in df["references"].to_list()]
        for png in df["image"]:
            image = decode_image(png)
            assert image.mode == "RGB" and image.size == (SMALL.image_size, SMALL.image_size)
    assert world["samples"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in world["train"].parent.iterdir() if p.name.endswith(".tmp")]


def test_train_has_one_caption_and_test_has_distinct_references(world: dict[str, Path]) -> None:
    assert all(len(refs) == 1 for refs in read_split(world["train"])["references"])
    for refs in read_split(world["test"])["references"].to_list():
        assert len(refs) == SMALL.captions_per_image == len(set(refs))


def test_caption_colours_appear_in_the_image(world: dict[str, Path]) -> None:
    """End to end: every colour a stored caption names is drawn somewhere in its image."""
    for png, caption in zip(*read_split(world["test"]).select("image", "caption"), strict=True):
        pixels = np.asarray(decode_image(png), dtype=int).reshape(-1, 3)
        for colour in set(caption.split()) & COLOURS.keys():
            distance = np.abs(pixels - np.array(COLOURS[colour])).max(axis=1)
            assert distance.min() <= 8, f"{colour} named in {caption!r} but not drawn"


@pytest.mark.parametrize("max_objects", [1, 2, 4, 5, 6])
def test_object_count_is_within_bounds_and_cells_do_not_repeat(max_objects: int) -> None:
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(200):
        scene = sample_scene(rng, max_objects)
        cells = [o.cell for o in scene.objects]
        assert len(set(cells)) == len(cells) and max(cells) < scene.grid**2
        counts.add(len(scene.objects))
    assert counts == set(range(1, max_objects + 1))


@pytest.mark.parametrize("max_objects", [2, 6])
def test_every_caption_names_each_object(max_objects: int) -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        scene = sample_scene(rng, max_objects)
        for caption in sample_captions(scene, rng, 10):
            for obj in scene.objects:
                assert f"{obj.colour} {obj.shape}" in caption
            words = re.findall(r"\b(?:" + "|".join(SHAPES) + r")\b", caption)
            assert len(words) == len(scene.objects)


def test_caption_states_size_and_position() -> None:
    rng = np.random.default_rng(2)
    scene = sample_scene(rng, 2)
    for caption in sample_captions(scene, rng, 10):
        for obj in scene.objects:
            sizes = [wording[obj.large] for wording in SIZE_WORDINGS]
            phrase = rf"(?:{'|'.join(sizes)}) {obj.colour} {obj.shape} {POSITIONS_2X2[obj.cell]}"
            assert re.search(phrase, caption), (phrase, caption)


def test_default_captions_are_short() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        assert all(len(c.split()) <= 21 for c in sample_captions(sample_scene(rng, 2), rng, 3))


def test_paraphrases_are_all_distinct_and_bounded() -> None:
    rng = np.random.default_rng(4)
    scene = next(s for s in (sample_scene(rng, 2) for _ in range(50)) if len(s.objects) == 2)
    # 5 templates x 2 size wordings x 2 orders
    assert len(set(sample_captions(scene, rng, 20))) == 20
    with pytest.raises(ValueError, match="only 20"):
        sample_captions(scene, rng, 21)


@pytest.mark.parametrize(("size", "max_objects"), [(32, 2), (64, 6)])
def test_each_object_is_drawn_at_its_centre(size: int, max_objects: int) -> None:
    rng = np.random.default_rng(5)
    for _ in range(30):
        scene = sample_scene(rng, max_objects)
        pixels = np.asarray(render_scene(scene, size), dtype=int)
        for obj in scene.objects:
            x, y, _ = object_box(obj, scene.grid, size)
            assert np.abs(pixels[int(y), int(x)] - COLOURS[obj.colour]).max() <= 8, (obj, pixels[int(y), int(x)])


@pytest.mark.parametrize("max_objects", [4, 6])
def test_objects_stay_inside_their_own_cell(max_objects: int) -> None:
    rng = np.random.default_rng(6)
    for _ in range(200):
        scene = sample_scene(rng, max_objects)
        for obj in scene.objects:
            x, y, r = object_box(obj, scene.grid, 1.0)
            row, col = divmod(obj.cell, scene.grid)
            assert col / scene.grid < x - r and x + r < (col + 1) / scene.grid
            assert row / scene.grid < y - r and y + r < (row + 1) / scene.grid


def test_negative_seed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="world.seed"):
        generate_world(SMALL.model_copy(update={"seed": -1}), tmp_path)


def test_read_split_names_the_file_and_columns(tmp_path: Path) -> None:
    missing = tmp_path / "train.parquet"
    with pytest.raises(FileNotFoundError, match=r"train\.parquet.*id: String.*references"):
        read_split(missing)
    missing.write_bytes(b"not a parquet file")
    with pytest.raises(ValueError, match=r"cannot read world split .*train\.parquet.*expected id"):
        read_split(missing)
    pl.DataFrame({"id": ["x"], "caption": ["a red circle"]}).write_parquet(missing)
    with pytest.raises(ValueError, match=r"has columns \(id: String, caption: String\); expected .*image: Binary"):
        read_split(missing)


def test_decode_image_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="cannot decode image bytes"):
        decode_image(b"\x89PNG but not really")
