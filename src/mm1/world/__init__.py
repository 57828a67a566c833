"""The synthetic MM1 world: seeded scenes of shapes and every data type of the MM1 paper as records.

`build_world(cfg)` returns a `World` of records (`mm1.data.records`): caption pairs (alt-text and
synthetic captions), interleaved documents, text documents with a knowledge base, captioning / VQA /
TextCore benchmarks on held-out images, SFT conversations and multiple-choice items.
"""

from mm1.world.render import decode_image, encode_png, render_scene
from mm1.world.samples import render_samples_png
from mm1.world.world import World, build_world

__all__ = [
    "World",
    "build_world",
    "decode_image",
    "encode_png",
    "render_samples_png",
    "render_scene",
]
