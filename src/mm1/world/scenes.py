"""The synthetic "MM1 world": seeded procedural scenes of simple shapes, with captions.

A scene holds 1..max_objects objects on a plain background. Each object has a shape, a colour,
a size (small/large) and a cell of a grid (2x2 when max_objects <= 4, else 3x3), so objects
never overlap. Captions come from a small closed vocabulary and a deterministic grammar:

    caption   = template(object list)           e.g. "there is {list}", "two shapes: {list}"
    list      = obj | obj "and" obj | obj "," obj ... "and" obj
    obj       = "a" size colour shape position  e.g. "a large red circle in the top left"

A caption's paraphrase is (template, size wording, order of objects). Each training image gets
one paraphrase, each test image `captions_per_image` distinct ones, all drawn by a seeded rng.
Train and test draw from independent streams spawned from `WorldConfig.seed`, so the test set
does not change when n_train does.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw

from mm1 import atomic
from mm1.config.data import WorldConfig
from mm1.progress import progress

# --- the world's vocabulary ------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 20),
    "green": (30, 170, 40),
    "blue": (30, 80, 230),
    "purple": (150, 40, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (15, 15, 15),
}
SIZE_WORDINGS: tuple[tuple[str, str], ...] = (("small", "large"), ("little", "big"))
"""Paraphrases of (small, large); one wording is used throughout a caption."""
POSITIONS_2X2: tuple[str, ...] = (
    "in the top left", "in the top right",
    "in the bottom left", "in the bottom right",
)  # fmt: skip
POSITIONS_3X3: tuple[str, ...] = (
    "in the top left", "at the top", "in the top right",
    "on the left", "in the center", "on the right",
    "in the bottom left", "at the bottom", "in the bottom right",
)  # fmt: skip
NUMBERS: tuple[str, ...] = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES: tuple[str, ...] = (
    "{list}",
    "there is {list}",
    "{count} {shapes}: {list}",
    "a picture of {list}",
    "a {background} background with {list}",
)
"""Caption templates. 5 templates x 2 size wordings = 10 paraphrases of a one-object scene,
enough for the largest allowed captions_per_image (10); more objects add orderings."""

SPLIT_COLUMNS: dict[str, pl.DataType] = {
    "id": pl.String(),
    "image": pl.Binary(),
    "caption": pl.String(),
    "references": pl.List(pl.String()),
}
"""Columns (and types) of train.parquet and test.parquet."""


def grid_side(max_objects: int) -> int:
    """Side of the placement grid: 2x2 holds up to 4 objects, 3x3 up to 9."""
    return 2 if max_objects <= 4 else 3


# --- scenes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene; `cell` indexes the grid in reading order (row-major)."""

    shape: str
    colour: str
    large: bool
    cell: int
    jitter: tuple[float, float]
    """Offset of the centre from the cell centre, as a fraction of the free room in the cell."""


@dataclass(frozen=True)
class Scene:
    """A background colour, a grid side and non-overlapping objects (sorted by cell)."""

    background: str
    grid: int
    objects: tuple[SceneObject, ...]


def sample_scene(rng: np.random.Generator, max_objects: int) -> Scene:
    """Draw a scene of 1..max_objects objects, each in its own grid cell."""
    grid = grid_side(max_objects)
    n = int(rng.integers(1, max_objects + 1))
    cells = sorted(int(c) for c in rng.choice(grid * grid, size=n, replace=False))
    colours = list(COLOURS)
    objects = tuple(
        SceneObject(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            colour=colours[int(rng.integers(len(colours)))],
            large=bool(rng.integers(2)),
            cell=cell,
            jitter=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))),
        )
        for cell in cells
    )
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return Scene(background=background, grid=grid, objects=objects)


# --- rendering --------------------------------------------------------------------------------


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    """Draw the scene at up to 4x supersampling, then box-filter down to image_size px (RGB)."""
    factor = max(1, min(4, 512 // image_size))
    side = image_size * factor
    canvas = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw_shape(draw, obj.shape, *object_box(obj, scene.grid, side), COLOURS[obj.colour])
    return canvas.resize((image_size, image_size), Image.Resampling.BOX)


def object_box(obj: SceneObject, grid: int, side: float) -> tuple[float, float, float]:
    """(centre x, centre y, half-extent) of an object on a canvas `side` px wide, in px."""
    cell = side / grid
    extent = cell * (0.8 if obj.large else 0.45)  # large 80%, small 45% of the cell side
    room = (cell - extent) / 2 * 0.8  # keep a margin so neighbours never touch
    row, col = divmod(obj.cell, grid)
    return (col + 0.5) * cell + obj.jitter[0] * room, (row + 0.5) * cell + obj.jitter[1] * room, extent / 2


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]
) -> None:
    """Draw one filled shape of half-extent r centred on (cx, cy)."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        s = r * 0.85  # a square looks bigger than a circle of the same extent
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "cross":
        t = r / 3  # arm half-thickness: arms are a third of the extent wide
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image (deterministic for a given Pillow/zlib version)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(png_bytes: bytes) -> Image.Image:
    """Decode the bytes of the `image` column into an RGB PIL image."""
    try:
        image = Image.open(io.BytesIO(png_bytes))
        image.load()
    except Exception as error:  # PIL raises several types for bad data
        raise ValueError(f"cannot decode image bytes ({len(png_bytes)} bytes) as PNG: {error}") from error
    return image.convert("RGB")


# --- captions ---------------------------------------------------------------------------------


def caption_scene(scene: Scene, template: int, wording: int, order: tuple[int, ...]) -> str:
    """The caption of a scene for one paraphrase: a template, a size wording, an object order."""
    positions = POSITIONS_2X2 if scene.grid == 2 else POSITIONS_3X3
    small, large = SIZE_WORDINGS[wording]
    phrases = [
        f"a {large if o.large else small} {o.colour} {o.shape} {positions[o.cell]}"
        for o in (scene.objects[i] for i in order)
    ]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    n = len(phrases)
    return TEMPLATES[template].format(
        list=listed,
        count=NUMBERS[n - 1],
        shapes="shape" if n == 1 else "shapes",
        background=scene.background,
    )


def sample_captions(scene: Scene, rng: np.random.Generator, k: int) -> list[str]:
    """k distinct paraphrases of the scene's caption, drawn without replacement."""
    n = len(scene.objects)
    n_orders = math.factorial(n)
    total = len(TEMPLATES) * len(SIZE_WORDINGS) * n_orders
    if k > total:
        raise ValueError(f"asked for {k} distinct captions but a {n}-object scene has only {total}")
    captions = []
    for index in rng.choice(total, size=k, replace=False):
        rest, template = divmod(int(index), len(TEMPLATES))
        rank, wording = divmod(rest, len(SIZE_WORDINGS))
        captions.append(caption_scene(scene, template, wording, _permutation(rank, n)))
    return captions


def _permutation(rank: int, n: int) -> tuple[int, ...]:
    """The rank-th permutation of range(n) in lexicographic order (Lehmer code)."""
    items = list(range(n))
    out = []
    for i in range(n, 0, -1):
        index, rank = divmod(rank, math.factorial(i - 1))
        out.append(items.pop(index))
    return tuple(out)


# --- the dataset ------------------------------------------------------------------------------


def generate_world(cfg: WorldConfig, out_dir: Path) -> dict[str, Path]:
    """Write train.parquet, test.parquet and samples.png into out_dir; return their paths.

    Same cfg, same bytes. The resolved cfg is stored in each parquet file's key-value metadata
    under "mm1.world_config".
    """
    if cfg.seed < 0:
        raise ValueError(f"world.seed must be >= 0 (numpy SeedSequence), got {cfg.seed}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_seq, test_seq = np.random.SeedSequence(cfg.seed).spawn(2)
    metadata = {"mm1.world_config": cfg.model_dump_json()}
    with progress(total=cfg.n_train + cfg.n_test, desc="world", unit="img") as bar:
        train = _make_split(cfg, "train", cfg.n_train, 1, np.random.default_rng(train_seq), bar.update)
        test = _make_split(cfg, "test", cfg.n_test, cfg.captions_per_image, np.random.default_rng(test_seq), bar.update)
    paths = {"train": out_dir / "train.parquet", "test": out_dir / "test.parquet", "samples": out_dir / "samples.png"}
    atomic.write_with(paths["train"], lambda f: train.write_parquet(f, metadata=metadata))
    atomic.write_with(paths["test"], lambda f: test.write_parquet(f, metadata=metadata))
    atomic.write_with(paths["samples"], lambda f: _plot_samples(test.head(16), f))
    return paths


def _make_split(
    cfg: WorldConfig, split: str, n: int, k: int, rng: np.random.Generator, tick: Callable[[int], object]
) -> pl.DataFrame:
    """n scenes rendered to PNG, each with k distinct captions (the first is `caption`)."""
    rows: dict[str, list] = {name: [] for name in SPLIT_COLUMNS}
    for i in range(n):
        scene = sample_scene(rng, cfg.max_objects)
        captions = sample_captions(scene, rng, k)
        rows["id"].append(f"{split}-{i:06d}")
        rows["image"].append(encode_png(render_scene(scene, cfg.image_size)))
        rows["caption"].append(captions[0])
        rows["references"].append(captions)
        tick(1)
    return pl.DataFrame(rows, schema=SPLIT_COLUMNS)


def _plot_samples(df: pl.DataFrame, path: Path) -> None:
    """A 4-column grid of images, each with its first caption wrapped beneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = max(1, math.ceil(df.height / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.0, rows * 3.9), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.98, bottom=0.02, wspace=0.1, hspace=0.35)
    for ax in axes.flat:
        ax.axis("off")
    for ax, png, caption in zip(axes.flat, df["image"], df["caption"], strict=False):
        ax.imshow(decode_image(png), interpolation="nearest")
        wrapped = textwrap.fill(caption, 34)
        ax.text(0.5, -0.04, wrapped, transform=ax.transAxes, ha="center", va="top", fontsize=8)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)


def read_split(path: Path) -> pl.DataFrame:
    """Read train.parquet or test.parquet, checking that it holds the expected columns."""
    path = Path(path)
    expected = ", ".join(f"{name}: {dtype}" for name, dtype in SPLIT_COLUMNS.items())
    if not path.is_file():
        raise FileNotFoundError(f"world split {path} does not exist; expected a parquet file with {expected}")
    try:
        df = pl.read_parquet(path)
    except Exception as error:  # polars raises its own types for corrupt files
        raise ValueError(f"cannot read world split {path} as parquet ({error}); expected {expected}") from error
    wrong = {name: df.schema.get(name) for name, dtype in SPLIT_COLUMNS.items() if df.schema.get(name) != dtype}
    if wrong:
        found = ", ".join(f"{name}: {dtype}" for name, dtype in df.schema.items())
        raise ValueError(f"world split {path} has columns ({found}); expected {expected}")
    return df
