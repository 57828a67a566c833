"""The base every config model shares: frozen, no unknown keys, every field documented."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A validated, immutable config section. Unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
