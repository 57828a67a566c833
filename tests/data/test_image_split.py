"""Image splitting: crops tile the resized picture exactly, the overview comes last."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mm1.data.image_split import encode_png, images_per_picture, split_image, split_image_bytes
from mm1.data.images import image_tensor


def _picture(side: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)


@pytest.mark.parametrize(("grid", "count"), [(1, 1), (2, 5), (3, 10)])
def test_count_order_and_sizes(grid: int, count: int) -> None:
    parts = split_image(_picture(), grid, 16)
    assert images_per_picture(grid) == count == len(parts)
    assert all(p.size == (16, 16) and p.mode == "RGB" for p in parts)


def test_crops_tile_the_resized_picture_row_major() -> None:
    pic, grid, size = _picture(37), 3, 12
    parts = split_image(pic, grid, size)
    big = np.asarray(Image.fromarray(pic).resize((grid * size,) * 2, Image.Resampling.BICUBIC))
    rows = [np.concatenate([np.asarray(parts[r * grid + c]) for c in range(grid)], axis=1) for r in range(grid)]
    np.testing.assert_array_equal(np.concatenate(rows, axis=0), big)


def test_overview_is_a_plain_resize_and_last() -> None:
    pic = _picture(50, seed=1)
    overview = split_image(Image.fromarray(pic), 2, 20)[-1]
    plain = Image.fromarray(pic).resize((20, 20), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(overview), np.asarray(plain))


def test_grid_1_is_the_picture_resized_once_without_overview() -> None:
    pic = _picture(24)
    (only,) = split_image(pic, 1, 24)
    np.testing.assert_array_equal(np.asarray(only), pic)  # already at size: untouched


def test_bytes_round_trip_decodes_at_size_without_resizing() -> None:
    png = encode_png(Image.fromarray(_picture(30)))
    assert split_image_bytes(png, 1, 16) == [png]  # no splitting: the packer's bytes, resized at load
    parts = split_image_bytes(png, 2, 16)
    expected = split_image(Image.open(io.BytesIO(png)), 2, 16)
    assert len(parts) == 5
    for got, want in zip(parts, expected, strict=True):
        with Image.open(io.BytesIO(got)) as im:
            np.testing.assert_array_equal(np.asarray(im), np.asarray(want))  # PNG: lossless
        assert image_tensor(got, 16).shape == (3, 16, 16)


def test_grayscale_arrays_become_rgb() -> None:
    parts = split_image(_picture(20)[..., 0], 2, 8)
    assert all(p.mode == "RGB" for p in parts)


@pytest.mark.parametrize(("grid", "size", "match"), [(0, 8, "grid"), (2, 0, "size")])
def test_bad_arguments_are_named(grid: int, size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_image(_picture(), grid, size)


def test_bad_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        split_image(np.zeros((4, 4, 3), dtype=np.float32), 2, 8)
