"""The synthetic MM1 world: seeded procedural scenes of shapes with captions (see `scenes`)."""

from mm1.world.scenes import SPLIT_COLUMNS, decode_image, generate_world, read_split

__all__ = ["SPLIT_COLUMNS", "decode_image", "generate_world", "read_split"]
