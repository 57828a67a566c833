"""Config of the SFT data: the chat template, image splitting, and the order of the examples."""

from __future__ import annotations

import string

from pydantic import Field, field_validator

from mm1.config.base import Section, Seed

IMAGE_PLACEHOLDER = "<image>"


class SFTConfig(Section):
    """How LLaVA-style conversations become SFT training sequences (one conversation per sequence).

    A sequence reads ``<bos> system (user_template answer <eos>)...``; the loss is on exactly the
    answers and their ``<eos>``. The picture's slots go where the first human turn says ``<image>``.
    """

    system_prompt: str = ""
    """Text after ``<bos>``, before the first turn (no loss); empty: none."""
    user_template: str = Field("User: {text}\nAssistant:", min_length=1)
    """A human turn with its text at ``{text}`` (no loss). It ends with the cue the answer follows."""
    assistant_template: str = Field("{text}", min_length=1)
    """A gpt turn with its text at ``{text}``; these tokens and the ``<eos>`` after them carry the loss."""
    image_grid: int = Field(1, ge=1, le=8)
    """Image splitting: each picture becomes image_grid^2 crops + 1 overview, each with the connector's N
    slots (MM1: 2 -> 5 images); 1 = no splitting (one image). Each crop and the overview have
    model.encoder.image_size pixels: raise that for high-resolution SFT (the pre-trained encoder's
    position embeddings are interpolated on load)."""
    epochs: int = Field(1, ge=1)
    """Passes over the conversations; the order is a seeded permutation, reshuffled every epoch."""
    seed: Seed = 0
    """Seed of the order; the same seed and inputs give byte-identical sequences."""

    @field_validator("user_template", "assistant_template")
    @classmethod
    def _one_text_field(cls, value: str, info) -> str:
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError as e:
            raise ValueError(f"{info.field_name} is not a valid format string ({e}); write braces as {{{{ }}}}") from e
        if fields != ["text"]:
            raise ValueError(f"{info.field_name} must contain {{text}} exactly once and no other field, got {fields}")
        if IMAGE_PLACEHOLDER in value:
            raise ValueError(
                f"{info.field_name} may not contain {IMAGE_PLACEHOLDER}: the image goes where a turn says so"
            )
        return value

    @field_validator("system_prompt")
    @classmethod
    def _no_image(cls, value: str) -> str:
        if IMAGE_PLACEHOLDER in value:
            raise ValueError(f"system_prompt may not contain {IMAGE_PLACEHOLDER}")
        return value
