"""Scenes and rendering: bounds, no overlap, degradations, and sign text legible only at full size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mm1.world.render import BLOCK, object_box, render_scene
from mm1.world.scene import ALL_COMBOS, Scene, Sign, sample_scene
from mm1.world.vocab import COLOURS, SIGN_TEXTS


@pytest.mark.parametrize("max_objects", [1, 2, 3, 4, 6])
def test_objects_and_sign_have_their_own_cells(max_objects: int) -> None:
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(300):
        scene = sample_scene(rng, max_objects, text_fraction=0.5, degraded_fraction=0.5)
        cells = [o.cell for o in scene.objects] + ([scene.sign.cell] if scene.sign else [])
        assert len(set(cells)) == len(cells) and max(cells) < scene.grid**2
        assert 1 <= len(scene.visible) <= max_objects  # occlusion never hides the only object
        counts.add(len(scene.objects))
    assert counts == set(range(1, max_objects + 1))


def test_sampler_honours_combos_must_include_and_forced_options() -> None:
    rng = np.random.default_rng(1)
    allowed, novel = ALL_COMBOS[:5], ALL_COMBOS[-1]
    for _ in range(100):
        scene = sample_scene(
            rng, 3, combos=allowed, must_include=[novel], need_sign=True, degradation="any", min_objects=2
        )
        combos = [o.combo for o in scene.objects]
        assert novel in combos and all(c in allowed for c in combos if c != novel)
        assert scene.sign is not None and scene.degradation is not None and len(scene.objects) >= 2


@pytest.mark.parametrize(("size", "max_objects"), [(32, 2), (64, 3), (64, 6)])
def test_each_object_is_drawn_at_its_centre(size: int, max_objects: int) -> None:
    rng = np.random.default_rng(5)
    for _ in range(30):
        scene = sample_scene(rng, max_objects)
        pixels = np.asarray(render_scene(scene, size), dtype=int)
        for obj in scene.objects:
            x, y, _ = object_box(obj, scene.grid, size)
            assert np.abs(pixels[int(y), int(x)] - COLOURS[obj.colour]).max() <= 8, obj


def test_degradations_change_the_image() -> None:
    obj = sample_scene(np.random.default_rng(2), 1).objects[0]
    clean = Scene("white", 2, (obj,), Sign("kite", (obj.cell + 1) % 4))
    base = np.asarray(render_scene(clean, 64), dtype=float)
    blurred = np.asarray(render_scene(Scene(**{**clean.__dict__, "degradation": "blur"}), 64), dtype=float)
    faded = np.asarray(render_scene(Scene(**{**clean.__dict__, "degradation": "low_contrast"}), 64), dtype=float)
    hidden = Scene(**{**clean.__dict__, "degradation": "occlusion", "occluded_cell": clean.sign.cell})
    occluded = np.asarray(render_scene(hidden, 64), dtype=float)
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.7 * np.abs(np.diff(base, axis=1)).mean()
    assert faded.std() < 0.5 * base.std()
    row, col = divmod(clean.sign.cell, 2)
    block = occluded[row * 32 + 8 : row * 32 + 24, col * 32 + 8 : col * 32 + 24]
    assert np.abs(block - BLOCK).max() == 0 and hidden.readable_sign is None and clean.readable_sign == "kite"


def _sign_cells(size: int, down: int | None = None) -> np.ndarray:
    """Gray-level crops of the sign's cell for every sign text, optionally after downscaling to `down` px."""
    crops = []
    for text in SIGN_TEXTS:
        image = render_scene(Scene("white", 2, (), Sign(text, 0)), size)
        if down is not None:
            image = image.resize((down, down), Image.Resampling.BOX)
        side = image.size[0] // 2
        crops.append(np.asarray(image.crop((0, 0, side, side)).convert("L"), dtype=float))
    return np.stack(crops)


def _closest_pair(crops: np.ndarray) -> float:
    """Over all pairs of texts: the smallest largest-pixel-difference (how alike the two likeliest look)."""
    flat = crops.reshape(len(crops), -1)
    diff = np.abs(flat[:, None] - flat[None]).max(-1)
    np.fill_diagonal(diff, np.inf)
    return float(diff.min())


def test_sign_text_is_legible_at_render_size_and_not_after_downscaling() -> None:
    full = _sign_cells(64)
    assert full.min(axis=(1, 2)).max() < 100  # every text has dark ink on the light plate
    assert _closest_pair(full) >= 64  # any two texts differ clearly somewhere
    small = _sign_cells(64, down=20)
    assert small.min(axis=(1, 2)).max() > 150  # downscaled, some text's ink is a light smear
    assert _closest_pair(small) < 16  # and some texts become indistinguishable
