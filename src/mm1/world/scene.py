"""The scene model of the MM1 world and its seeded sampler.

A scene is a background, a grid (2x2 or 3x3) and 1..max_objects objects, each in its own cell so
that objects never overlap. Optionally a sign (a small plate showing a word or a number) takes one
more free cell, and optionally a degradation spoils the image: a blur (the sign becomes unreadable),
a gray block over one cell (what is in it becomes invisible) or low contrast. Everything the
language side says about an image is computed from the scene, from what is *visible* in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mm1.world.vocab import BACKGROUNDS, COLOURS, DEGRADATIONS, SHAPES, SIGN_NUMBERS, WORDS, grid_side

Combo = tuple[str, str]
"""A (colour, shape) pair, e.g. ("red", "circle")."""
ALL_COMBOS: tuple[Combo, ...] = tuple((c, s) for c in COLOURS for s in SHAPES)


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene; `cell` indexes the grid in reading order (row-major)."""

    shape: str
    colour: str
    large: bool
    cell: int
    jitter: tuple[float, float]
    """Offset of the centre from the cell centre, as a fraction of the free room in the cell."""

    @property
    def combo(self) -> Combo:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Sign:
    """A light plate with dark text (a word or a number) inside one grid cell."""

    text: str
    cell: int
    jitter: tuple[float, float] = (0.0, 0.0)
    """Offset of the plate from the cell centre, as a fraction of the free room in the cell."""


@dataclass(frozen=True)
class Scene:
    """Background, grid side, non-overlapping objects (sorted by cell), an optional sign and degradation."""

    background: str
    grid: int
    objects: tuple[SceneObject, ...]
    sign: Sign | None = None
    degradation: str | None = None
    """None or one of vocab.DEGRADATIONS."""
    occluded_cell: int | None = None
    """The cell the gray block covers (degradation "occlusion" only)."""

    @property
    def visible(self) -> tuple[SceneObject, ...]:
        """The objects a viewer can see (all but the one under the gray block)."""
        return tuple(o for o in self.objects if o.cell != self.occluded_cell)

    @property
    def readable_sign(self) -> str | None:
        """The sign's text if a viewer can read it (not occluded, not blurred), else None."""
        if self.sign is None or self.sign.cell == self.occluded_cell or self.degradation == "blur":
            return None
        return self.sign.text

    @property
    def sign_visible(self) -> bool:
        """A sign is there and not hidden (it may still be too blurred to read)."""
        return self.sign is not None and self.sign.cell != self.occluded_cell

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (record meta); `dataclasses.asdict` without its deep copies."""
        return {
            "background": self.background,
            "grid": self.grid,
            "objects": [
                {"shape": o.shape, "colour": o.colour, "large": o.large, "cell": o.cell, "jitter": list(o.jitter)}
                for o in self.objects
            ],
            "sign": None
            if self.sign is None
            else {"text": self.sign.text, "cell": self.sign.cell, "jitter": list(self.sign.jitter)},
            "degradation": self.degradation,
            "occluded_cell": self.occluded_cell,
        }


def sample_scene(
    rng: np.random.Generator,
    max_objects: int,
    *,
    text_fraction: float = 0.0,
    degraded_fraction: float = 0.0,
    combos: Sequence[Combo] = ALL_COMBOS,
    min_objects: int = 1,
    must_include: Sequence[Combo] = (),
    need_sign: bool = False,
    degradation: str | None = None,
) -> Scene:
    """Draw a scene of min_objects..max_objects objects with (colour, shape) pairs from `combos`.

    `must_include` pairs are placed first (NoCaps' novel combinations); `need_sign` forces a sign,
    `degradation` forces that degradation ("any" for a random one). A sign takes a cell, so on a full
    grid it lowers the number of objects by one.
    """
    if not combos:
        raise ValueError("sample_scene needs at least one allowed (colour, shape) combination")
    grid = grid_side(max_objects)
    cells_total = grid * grid
    has_sign = need_sign or bool(rng.random() < text_fraction)
    most = min(max_objects, cells_total - has_sign)
    least = min(max(min_objects, len(must_include), 1), most)
    n = int(rng.integers(least, most + 1))
    cells = [int(c) for c in rng.choice(cells_total, size=n + has_sign, replace=False)]
    sign_cell = cells.pop() if has_sign else None
    picks = list(must_include[:n]) + [combos[int(rng.integers(len(combos)))] for _ in range(n - len(must_include))]
    order = rng.permutation(n)
    objects = tuple(
        sorted(
            (
                SceneObject(
                    shape=picks[int(k)][1],
                    colour=picks[int(k)][0],
                    large=bool(rng.integers(2)),
                    cell=cell,
                    jitter=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))),
                )
                for k, cell in zip(order, cells, strict=True)
            ),
            key=lambda o: o.cell,
        )
    )
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    sign = None
    if sign_cell is not None:  # half words, half numbers
        texts = WORDS if rng.random() < 0.5 else SIGN_NUMBERS
        jitter = (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)))
        sign = Sign(texts[int(rng.integers(len(texts)))], sign_cell, jitter)
    if degradation == "any" or (degradation is None and rng.random() < degraded_fraction):
        degradation = DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))]
    occluded = None
    if degradation == "occlusion":
        # Hide the sign or an object, but never the only object; an empty cell if nothing else.
        pool = [o.cell for o in objects] if len(objects) >= 2 else []
        pool += [sign_cell] if sign_cell is not None else []
        pool = pool or [c for c in range(cells_total) if c not in {o.cell for o in objects}]
        occluded = int(pool[int(rng.integers(len(pool)))])
    return Scene(background, grid, objects, sign, degradation, occluded)


SceneKey = tuple
"""A scene without its jitter floats: see `layout_key`."""


def layout_key(scene: Scene) -> SceneKey:
    """Everything a scene is made of except the random jitter floats: background, grid, each object's
    cell, shape, colour and size class, the sign's text and cell, the degradation and the occluded cell.
    Two scenes with the same key are the same picture up to sub-cell shifts (a near-duplicate)."""
    objects = tuple((o.cell, o.shape, o.colour, o.large) for o in scene.objects)
    sign = None if scene.sign is None else (scene.sign.text, scene.sign.cell)
    return (scene.background, scene.grid, objects, sign, scene.degradation, scene.occluded_cell)


def unique(objects: Sequence[SceneObject], key: str, value: str) -> SceneObject | None:
    """The only object whose `key` attribute ("colour", "shape") equals value, or None."""
    found = [o for o in objects if getattr(o, key) == value]
    return found[0] if len(found) == 1 else None


def unique_combo(objects: Sequence[SceneObject], obj: SceneObject) -> bool:
    """No other object has the same colour and shape (so "the red circle" names exactly one)."""
    return sum(o.combo == obj.combo for o in objects) == 1


def unique_objects(scene: Scene) -> list[SceneObject]:
    """The visible objects no other visible object shares colour and shape with."""
    return [o for o in scene.visible if unique_combo(scene.visible, o)]


def row_col(cell: int, grid: int) -> tuple[int, int]:
    return divmod(cell, grid)


RELATIONS: dict[str, tuple[int, int]] = {
    "to the left of": (0, -1),
    "to the right of": (0, 1),
    "above": (-1, 0),
    "below": (1, 0),
}
"""Relation -> (sign of row difference, sign of column difference) of B relative to A: "B is to the left
of A" holds when B's column is smaller (any row); "B is above A" when B's row is smaller (any column)."""


def related(a: SceneObject, b: SceneObject, relation: str, grid: int) -> bool:
    """Whether b stands in `relation` to a (b is left of a, ...)."""
    (ra, ca), (rb, cb) = row_col(a.cell, grid), row_col(b.cell, grid)
    dr, dc = RELATIONS[relation]
    return (dr != 0 and np.sign(rb - ra) == dr) or (dc != 0 and np.sign(cb - ca) == dc)
