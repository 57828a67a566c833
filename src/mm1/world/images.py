"""Seeded streams and the image registry that keeps evaluation images out of training data.

Every record is drawn from its own generator, `stream_rng(seed, stream, index)`, so a source does not
change when another source's count changes. Independent streams make a repeated image unlikely but
not impossible (a one-object scene has only a few thousand distinct layouts), so the `Canvas` also
guarantees it at the level of layouts, as benchmark builders remove near-duplicates of training
images: all training images are drawn first, and an evaluation scene whose layout (`scene.layout_key`:
the scene without its jitter floats) was already drawn, by training or by another evaluation split,
is re-sampled. Re-sampling favours the larger layout spaces (scenes with more objects) a little, as
de-duplication does in real benchmarks; `Canvas.redrawn` counts how often it happened.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mm1.world.render import encode_png, render_scene
from mm1.world.scene import Scene, SceneKey, layout_key, sample_scene

MAX_REDRAWS = 1000
"""Most draws for one new evaluation image (a repeat is re-drawn)."""
MAX_REJECTS = 100
"""Most scenes an `accept` test may turn down for one image."""


def stream_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator of record `index` of `stream` (a name such as "captions" or "vqav2/val")."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode()), index])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ImageInfo:
    """One rendered image: where it went, its PNG hash and the scene it shows."""

    source: str
    """Stream that drew it ("captions", "documents", "sft", "coco/val", ...)."""
    training: bool
    """True for pre-training and SFT data, False for every benchmark split."""
    sha256: str
    scene: Scene


@dataclass
class Canvas:
    """Draws scenes, renders them to PNG and records every image; evaluation images are never repeats."""

    size: int
    max_objects: int
    log: list[ImageInfo] = field(default_factory=list)
    redrawn: int = 0
    """Evaluation scenes turned down because their layout had been drawn before."""
    _taken: set[SceneKey | str] = field(default_factory=set)
    """Scene keys and PNG hashes drawn so far."""
    _eval_started: bool = False

    def draw(
        self,
        rng: np.random.Generator,
        source: str,
        *,
        training: bool,
        accept: Callable[[Scene], bool] | None = None,
        **scene_kw: Any,
    ) -> tuple[Scene, bytes]:
        """Sample a scene (keyword arguments of `sample_scene`) and render it; (scene, PNG bytes).

        `accept` may turn scenes down before they are rendered (e.g. GQA needs two objects it can
        name); after MAX_REJECTS refusals the next scene is taken anyway.
        """
        if training and self._eval_started:
            raise RuntimeError("draw every training image before the first evaluation image")
        self._eval_started |= not training
        for _ in range(MAX_REDRAWS):
            scene = sample_scene(rng, self.max_objects, **scene_kw)
            for _ in range(MAX_REJECTS):
                if accept is None or accept(scene):
                    break
                scene = sample_scene(rng, self.max_objects, **scene_kw)
            key = layout_key(scene)
            if training or key not in self._taken:
                png = encode_png(render_scene(scene, self.size))
                digest = sha256(png)
                if training or digest not in self._taken:  # two layouts may differ only under the block
                    break
            self.redrawn += 1
        else:
            raise RuntimeError(f"{source}: no new layout after {MAX_REDRAWS} draws; the scene space is too small")
        self._taken |= {key, digest}
        self.log.append(ImageInfo(source, training, digest, scene))
        return scene, png
