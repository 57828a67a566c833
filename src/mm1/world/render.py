"""Drawing scenes with PIL: shapes, signs with small text, degradations; PNG encode/decode.

A scene is drawn at up to 4x supersampling and box-filtered down to the render size, then degraded
(blur, low contrast) at that size. Sign text is set in Pillow's bundled font (the same on every
machine) at about 15% of the image side (9-10 px at 64 px, 7 px at 48 px: legible; 4.5-5 px at
32 px: below the ~6-7 px em of the smallest legible pixel fonts), so reading signs needs image
resolution (and image tokens).
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mm1.world.scene import Scene, SceneObject, Sign
from mm1.world.vocab import BACKGROUNDS, COLOURS, SHAPES

TEXT_EM = 0.16
"""Font size of sign text as a fraction of the image side (10 px at 64 px; less where the text would not
fit its cell: 9 px for the widest three-letter words on a 3x3 grid)."""
PLATE = (250, 250, 250)
INK = (0, 0, 0)
BLOCK = (100, 100, 100)
"""The occluder: a dark gray block with a black outline (visible on every background)."""
BLUR_RADIUS = 1 / 32
"""Gaussian blur radius as a fraction of the image side (2 px at 64 px)."""
LOW_CONTRAST = 0.3
"""Low-contrast images keep this share of their contrast around mid-gray."""


def render_scene(scene: Scene, size: int) -> Image.Image:
    """The scene as a size x size RGB image."""
    factor = max(1, min(4, 512 // size))
    side = size * factor
    canvas = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw_shape(draw, obj.shape, *object_box(obj, scene.grid, side), COLOURS[obj.colour])
    if scene.sign is not None:
        _draw_sign(draw, scene.sign, scene.grid, side)
    if scene.occluded_cell is not None:
        x0, y0, x1, y1 = cell_box(scene.occluded_cell, scene.grid, side)
        inset = (x1 - x0) * 0.04
        draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=BLOCK, outline=INK, width=2 * factor)
    image = canvas.reduce(factor) if factor > 1 else canvas  # box filter: the mean of factor x factor pixels
    if scene.degradation == "blur":
        image = image.filter(ImageFilter.GaussianBlur(radius=size * BLUR_RADIUS))
    elif scene.degradation == "low_contrast":
        image = Image.blend(Image.new("RGB", image.size, (128, 128, 128)), image, LOW_CONTRAST)
    return image


def cell_box(cell: int, grid: int, side: float) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a grid cell on a canvas `side` px wide."""
    w = side / grid
    row, col = divmod(cell, grid)
    return col * w, row * w, (col + 1) * w, (row + 1) * w


def object_box(obj: SceneObject, grid: int, side: float) -> tuple[float, float, float]:
    """(centre x, centre y, half-extent) of an object on a canvas `side` px wide, in px."""
    cell = side / grid
    extent = cell * (0.8 if obj.large else 0.45)  # large 80%, small 45% of the cell side
    room = (cell - extent) / 2 * 0.8  # keep a margin so neighbours never touch
    row, col = divmod(obj.cell, grid)
    return (col + 0.5) * cell + obj.jitter[0] * room, (row + 0.5) * cell + obj.jitter[1] * room, extent / 2


def text_box(text: str, grid: int, side: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the sign's text inside its cell's plate, relative to the cell's corner."""
    font = sign_font(text, grid, side)
    left, top, right, bottom = font.getbbox(text)
    cell = side / grid
    x = (cell - (right - left)) / 2 - left
    y = (cell - (bottom - top)) / 2 - top
    return x + left, y + top, x + right, y + bottom


def sign_font(text: str, grid: int, side: int) -> ImageFont.FreeTypeFont:
    """The font for a sign: TEXT_EM of the side, smaller if the text would not fit 90% of its cell."""
    em = max(4, round(side * TEXT_EM))
    width = _font(em).getlength(text)
    fit = side / grid * 0.9
    return _font(em if width <= fit else max(4, int(em * fit / width)))


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def sign_offset(sign: Sign, grid: int, side: int) -> tuple[float, float]:
    """Where the sign's text box (relative to its cell's corner) goes on the canvas: the cell corner
    plus the sign's jitter times the room the plate leaves in the cell."""
    cx0, cy0, cx1, _ = cell_box(sign.cell, grid, side)
    tx0, ty0, tx1, ty1 = text_box(sign.text, grid, side)
    pad = (ty1 - ty0) * 0.35
    room_x = max(0.0, (cx1 - cx0) - (tx1 - tx0 + 2 * pad)) / 2 * 0.9
    room_y = max(0.0, (cx1 - cx0) - (ty1 - ty0 + 2 * pad)) / 2 * 0.9
    return cx0 + sign.jitter[0] * room_x, cy0 + sign.jitter[1] * room_y


def _draw_sign(draw: ImageDraw.ImageDraw, sign: Sign, grid: int, side: int) -> None:
    dx, dy = sign_offset(sign, grid, side)
    tx0, ty0, tx1, ty1 = text_box(sign.text, grid, side)
    pad = (ty1 - ty0) * 0.35
    draw.rectangle((dx + tx0 - pad, dy + ty0 - pad, dx + tx1 + pad, dy + ty1 + pad), fill=PLATE, outline=INK)
    font = sign_font(sign.text, grid, side)
    left, top, _, _ = font.getbbox(sign.text)
    draw.text((dx + tx0 - left, dy + ty0 - top), sign.text, font=font, fill=INK)


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
    elif shape == "star":
        angles = [math.radians(-90 + 36 * k) for k in range(10)]  # 5 points, 5 inner corners
        radii = [r if k % 2 == 0 else r * 0.45 for k in range(10)]
        draw.polygon(
            [(cx + q * math.cos(a), cy + 0.1 * r + q * math.sin(a)) for q, a in zip(radii, angles, strict=True)],
            fill=fill,
        )
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image (deterministic for a given Pillow/zlib version)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(png_bytes: bytes) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG) into an RGB PIL image."""
    try:
        image = Image.open(io.BytesIO(png_bytes))
        image.load()
    except Exception as error:  # PIL raises several types for bad data
        raise ValueError(f"cannot decode image bytes ({len(png_bytes)} bytes) as PNG: {error}") from error
    return image.convert("RGB")
