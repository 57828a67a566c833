"""Image splitting for high-resolution SFT (MM1 section 3.4): one picture -> crops + an overview.

    picture --resize--> (grid * size) px --cut--> grid x grid crops of size px (row-major)
    picture --resize--> size px                  = the overview, LAST

MM1: a 1344 px picture at grid 2 -> 4 crops of 672 px + a 672 px overview = 5 images. To the
model each crop is just another image (the encoder's resolution, N connector tokens), so
splitting is purely data: a picture takes ``images_per_picture(grid) * N`` ``<image>`` slots.
grid 1 is no splitting: the picture resized once, with no overview (it would repeat the crop).
Resizing is bicubic, as in :func:`mm1.data.images.image_tensor`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def images_per_picture(grid: int) -> int:
    """Images one picture becomes: grid^2 crops plus the overview, or 1 without splitting."""
    if grid < 1:
        raise ValueError(f"image grid must be >= 1, got {grid}")
    return grid * grid + (1 if grid > 1 else 0)


def _rgb(img: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim not in (2, 3):
            raise ValueError(f"an image array must be uint8 (H, W) or (H, W, C), got {img.dtype} {img.shape}")
        img = Image.fromarray(img)
    return img.convert("RGB")


def _resize(img: Image.Image, side: int) -> Image.Image:
    return img if img.size == (side, side) else img.resize((side, side), Image.Resampling.BICUBIC)


def split_image(img: Image.Image | np.ndarray, grid: int, size: int) -> list[Image.Image]:
    """The ``images_per_picture(grid)`` RGB images of ``img``, each ``size`` x ``size``: the crops
    of the picture resized to ``grid * size`` px (row-major), then the overview (grid > 1 only)."""
    images_per_picture(grid)  # checks grid
    if size < 1:
        raise ValueError(f"image size must be >= 1, got {size}")
    rgb = _rgb(img)
    big = _resize(rgb, grid * size)
    crops = [
        big.crop((col * size, row * size, (col + 1) * size, (row + 1) * size))
        for row in range(grid)
        for col in range(grid)
    ]
    return crops if grid == 1 else [*crops, _resize(rgb, size)]


def encode_png(img: Image.Image) -> bytes:
    """Lossless PNG bytes of ``img``: what packed sequences store."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def split_image_bytes(data: bytes, grid: int, size: int) -> list[bytes]:
    """:func:`split_image` of encoded image bytes, each result PNG-encoded (decodes at ``size`` px
    without a further resize). grid 1 returns ``[data]`` unchanged: like the pre-training packer,
    the picture is resized when it is loaded."""
    if grid == 1:
        return [data]
    with Image.open(io.BytesIO(data)) as im:
        return [encode_png(part) for part in split_image(im, grid, size)]
