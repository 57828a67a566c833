"""Image bytes -> normalised tensors at the encoder's resolution."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def image_tensor(png: bytes, size: int) -> torch.Tensor:
    """PNG/JPEG bytes -> (3, size, size) float32 in [-1, 1] (bicubic resize when needed)."""
    with Image.open(io.BytesIO(png)) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def stack_images(pngs: list[bytes], size: int) -> torch.Tensor:
    """(N, 3, size, size) from a list of encoded images."""
    return torch.stack([image_tensor(p, size) for p in pngs]) if pngs else torch.empty(0, 3, size, size)
