"""Load a RunConfig from YAML plus dotted overrides, with errors that name the field and the fix."""

from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mm1.config.readers import ConfigError, parse_json, parse_yaml, read_yaml
from mm1.config.run import RunConfig

__all__ = ["ConfigError", "apply_overrides", "dump", "from_dict", "load", "parse_json", "parse_override", "read_yaml"]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``loc`` (None if loc leaves the models)."""
    model: type[BaseModel] = RunConfig
    for key in loc:
        field = model.model_fields.get(str(key))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _allowed(loc: tuple[Any, ...], error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        if parent is not None:
            return "allowed keys: " + ", ".join(parent.model_fields)
    parent = _model_at(loc[:-1])
    if parent is not None and loc:
        field = parent.model_fields.get(str(loc[-1]))
        if field is not None:
            if typing.get_origin(field.annotation) is typing.Literal:
                return "allowed values: " + ", ".join(repr(a) for a in typing.get_args(field.annotation))
            if field.description:
                return field.description.splitlines()[0]
    return ""


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for error in exc.errors():
        loc = tuple(error["loc"])
        dotted = ".".join(str(p) for p in loc) or "<root>"
        msg = error["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if _model_at(loc) is not None:  # a check across the fields of one section
            lines.append(f"  {dotted}: {msg}")
            continue
        hint = _allowed(loc, error)
        given = "" if error["type"] == "extra_forbidden" else f" (got {error.get('input')!r})"
        lines.append(f"  {dotted}: {msg}{given}" + (f" -- {hint}" if hint else ""))
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.steps=10`` -> (["train", "steps"], 10). Values are parsed as YAML scalars/lists, by the
    rules of config files (:mod:`mm1.config.readers`: no duplicate keys, aliases or leading zeros)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.field=value (e.g. train.steps=10)")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    value = parse_yaml(raw, f"override {text!r}: the value", mapping=False) if raw.strip() else ""
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted override in a (deep-copied) nested dict; validation happens afterwards."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def from_dict(data: dict[str, Any], source: str = "<dict>") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load(path: Path | str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read ``path`` (or the defaults when None), apply dotted overrides, validate."""
    data = read_yaml(Path(path)) if path else {}
    data = apply_overrides(data, list(overrides or []))
    source = str(path) if path else "defaults"
    if overrides:
        source += " + " + " ".join(overrides)
    return from_dict(data, source)


def dump(config: RunConfig) -> str:
    """The fully resolved config as YAML (every field, defaults included)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
