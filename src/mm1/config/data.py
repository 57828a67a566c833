"""Config of the data side: the synthetic MM1 world and the tokenizer."""

from __future__ import annotations

from pydantic import Field

from mm1.config.base import Section


class WorldConfig(Section):
    """The built-in synthetic "MM1 world": seeded procedural scenes with captions."""

    seed: int = Field(0, ge=0)
    """Seed of the scene generator; the same seed gives byte-identical images and captions."""
    n_train: int = Field(4000, ge=1)
    """Number of image-caption pairs in the training split."""
    n_test: int = Field(100, ge=1)
    """Number of held-out image-caption pairs used for 0-shot captioning evaluation."""
    image_size: int = Field(32, ge=8, le=4096)
    """Side of the square rendered images, in pixels."""
    max_objects: int = Field(2, ge=1, le=6)
    """Each scene holds between 1 and this many objects."""
    captions_per_image: int = Field(3, ge=1, le=10)
    """Reference captions written per test image (CIDEr compares against all of them)."""


class TokenizerConfig(Section):
    """Byte-level BPE tokenizer trained with HF tokenizers on the training text."""

    vocab_size: int = Field(512, ge=260, le=262144)
    """Largest vocabulary size, special tokens included (256 byte symbols + 4 specials at least)."""
    min_frequency: int = Field(2, ge=1)
    """A merge must occur at least this often in the training text."""
