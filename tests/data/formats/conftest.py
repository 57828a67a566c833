"""Tiny test images, made with PIL."""

from __future__ import annotations

import io

import pytest
from PIL import Image


def encode(color: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (4, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def png():
    """png(i) -> the bytes of a distinct tiny PNG per i."""
    return lambda i=0, fmt="PNG": encode((i * 37 % 256, i * 11 % 256, 200), fmt)
