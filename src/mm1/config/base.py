"""The base every config model shares: frozen, no unknown keys, every field documented, strict types.

Strict means a value is taken only in its own type: ``true`` is not a step count, ``"10"`` is not a
number, ``1`` is not a bool; an int is accepted where a float is meant. Floats must be finite
(``.inf`` and ``.nan`` are refused), and every integer fits in 64 bits (what torch and numpy hold).
"""

from __future__ import annotations

import functools
import re
import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# A name that becomes a file or folder name (run, data source, benchmark): letters, digits, _ . -,
# not starting with . or - (so never ".", "..", a hidden file or an option), no "/" or whitespace.
# pydantic matches patterns with Rust's regex, whose $ is the very end (a trailing newline fails).
FILE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"

SEED_MAX = 2**32 - 1
# A seed: numpy's legacy seeding takes [0, 2**32 - 1]; torch.manual_seed takes up to 2**64 - 1 and megatron
# adds a few thousand (+ ranks) to it, and a study adds the seed index (train.seed + k): 32 bits leave room.
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]

INT64 = 2**63  # every integer field lies in [-INT64, INT64): torch and numpy hold 64-bit integers
# A float with an exponent and no dot (1e-3): YAML 1.1 (PyYAML, so Snakemake's --configfile) reads it as text.
_EXPONENT = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")


def _kinds(annotation: Any) -> set[Any]:
    """The types a field holds, through Optional: {float, None}, {tuple}, {list}, ..."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return {typing.get_origin(option) or option for option in options}


@functools.cache
def _field_kinds(model: type, name: str) -> frozenset[Any]:
    """_kinds of a model's field, once per field (the validator below runs on every field of every load)."""
    return frozenset(_kinds(model.model_fields[name].annotation))


def _check_ints(value: Any, depth: int = 0) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        raise ValueError("the value does not fit in a 64-bit integer (torch and numpy hold |n| < 2**63)")
    if isinstance(value, list | tuple) and depth < 2:
        for item in value:
            _check_ints(item, depth + 1)


class Section(BaseModel):
    """A validated, immutable config section. Unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, strict=True, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _as_yaml_1_2(cls, value: Any, info: ValidationInfo) -> Any:
        """A YAML or JSON list fills a tuple field (strict mode alone takes only a tuple there), a tuple a
        list field, and ``"1e-3"`` a float field (YAML 1.2 reads it as a number, YAML 1.1 as text);
        integers out of 64-bit range are refused before anything downstream sees them."""
        _check_ints(value)
        kinds = _field_kinds(cls, info.field_name) if info.field_name else set()
        if tuple in kinds and isinstance(value, list):
            return tuple(value)
        if list in kinds and isinstance(value, tuple):
            return list(value)
        if float in kinds and isinstance(value, str) and _EXPONENT.fullmatch(value):
            return float(value)
        return value
