"""The base every config model shares: frozen, no unknown keys, every field documented."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# A name that becomes a file or folder name (run, data source, benchmark): letters, digits, _ . -,
# not starting with . or - (so never ".", "..", a hidden file or an option), no "/" or whitespace.
# pydantic matches patterns with Rust's regex, whose $ is the very end (a trailing newline fails).
FILE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


class Section(BaseModel):
    """A validated, immutable config section. Unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
