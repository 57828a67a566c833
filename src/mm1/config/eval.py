"""Config of evaluation."""

from __future__ import annotations

from pydantic import Field

from mm1.config.base import Section


class EvalConfig(Section):
    """0-shot captioning of held-out images, scored with CIDEr."""

    caption_prompt: str = ""
    """Text placed after the image before the model writes its caption (recorded with results)."""
    max_new_tokens: int = Field(40, ge=1)
    """Greedy decoding stops at end-of-text or after this many tokens."""
    num_examples: int = Field(0, ge=0)
    """Evaluate the first N held-out images; 0 means all of them."""
    micro_batch_size: int = Field(16, ge=1)
    """Images decoded together."""
