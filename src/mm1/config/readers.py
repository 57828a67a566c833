"""Reading user YAML and JSON strictly: every surprise of the formats is a ConfigError, never a guess.

* duplicate keys are refused (YAML and JSON would silently keep the last one);
* YAML anchors and aliases (``&a``, ``*a``, ``<<: *a``) are refused: a few hundred bytes of nested
  aliases expand to gigabytes (the "billion laughs"), and a config has no need for them;
* integers are read as YAML 1.2 and Python write them: ``10``, ``1_000``, ``0x1f``, ``0o17``, ``0b101``.
  A leading zero (``010``, which YAML 1.1 reads as octal 8) is refused as ambiguous, and ``1:30`` is
  text, not the sexagesimal 90. Floats need no dot in the mantissa: ``1e-3`` is a number, as in YAML 1.2;
* nesting deeper than ``MAX_DEPTH`` is refused before any recursion can overflow;
* a config file must hold a mapping (an empty file is the defaults); ``[]``, ``false``, ``0`` are errors;
* a file larger than ``MAX_BYTES``, a folder, or a file that is not UTF-8 is an error naming the path.

Every place mm1 reads user YAML or JSON goes through :func:`parse_yaml`, :func:`parse_json` or
:func:`read_yaml`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import ScalarNode

MAX_DEPTH = 32  # nested mappings and lists; the deepest in config/ is 7 (study.lessons.*.factors.*.*.*)
MAX_BYTES = 8 * 2**20  # config/study-paper.yaml is about 30 kB


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the field and what is allowed."""


INT_TAG, FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
INT_RE = re.compile(
    r"^[-+]?(?:0|[1-9](?:_?[0-9])*|0[0-9]+|0x[0-9a-fA-F](?:_?[0-9a-fA-F])*|0o[0-7](?:_?[0-7])*|0b[01](?:_?[01])*)$"
)
_DIGITS = r"[0-9](?:_?[0-9])*"
FLOAT_RE = re.compile(  # a dot or an exponent: 1.5, .5, 1., 1e-3, 1.5E+3; and .inf, -.inf, .nan
    rf"^[-+]?(?:(?:\.[0-9]+|{_DIGITS}\.[0-9_]*)(?:[eE][-+]?[0-9]+)?|{_DIGITS}[eE][-+]?[0-9]+)$"
    r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
)
NO_ANCHORS = "mm1 configs take no anchors or aliases; write the value out"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (pure Python) with the rules above."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            raise _error(event, f"alias *{event.anchor} refused: {NO_ANCHORS}")
        if isinstance(event, ScalarEvent | CollectionStartEvent) and event.anchor is not None:
            raise _error(event, f"anchor &{event.anchor} refused: {NO_ANCHORS}")
        if isinstance(event, CollectionStartEvent):
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _error(event, f"nested more than {MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            if isinstance(event, CollectionStartEvent):
                self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode):
                key = self.construct_object(key_node)
                if key in seen:
                    first = seen[key].start_mark.line + 1
                    problem = f"duplicate key {key!r} (first given on line {first})"
                    raise ConstructorError(None, None, problem, key_node.start_mark)
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        text = str(self.construct_scalar(node))
        digits = text.lstrip("+-")
        if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
            raise ConstructorError(
                None, None,
                f"{text}: a leading zero is ambiguous (YAML 1.1 reads it as octal); write {int(digits)} "
                f"for the number, 0o{digits.lstrip('0') or '0'} for octal, or quote it for text",
                node.start_mark,
            )  # fmt: skip
        return int(text, 0)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in (INT_TAG, FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(INT_TAG, INT_RE, list("-+0123456789"))
_Loader.add_implicit_resolver(FLOAT_TAG, FLOAT_RE, list("-+0123456789."))
_Loader.add_constructor(INT_TAG, _Loader.construct_yaml_int)


def _error(event: Any, problem: str) -> yaml.MarkedYAMLError:
    return yaml.MarkedYAMLError(None, None, problem, event.start_mark)


def _brief(exc: yaml.YAMLError) -> str:
    """PyYAML's message on one line: the problem and where ("line 3, column 5")."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f"{exc.context} " if exc.context else ""
        return f"{context}{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def parse_yaml(text: str, where: str, mapping: bool = True) -> Any:
    """The YAML document in ``text``; ``where`` names it in errors. With ``mapping``, the document must
    be a mapping (an empty one is ``{}``)."""
    try:
        loader = _Loader(text)  # the reader refuses control characters here
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {} if mapping else None  # None: empty
        loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML for mm1: {_brief(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply (at most {MAX_DEPTH} levels)") from None
    if mapping:
        _require_mapping(data, where, "; an empty file means the defaults")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ConfigError(f"{name} is not a JSON number; give a finite number")


def parse_json(text: str, where: str, mapping: bool = True) -> Any:
    """The JSON value in ``text`` (a JSON object with ``mapping``), duplicate keys, NaN/Infinity and
    nesting deeper than MAX_DEPTH refused; ``where`` names it in errors."""
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply (at most {MAX_DEPTH} levels)") from None
    if depth(data) > MAX_DEPTH:
        raise ConfigError(f"{where}: nested too deeply (at most {MAX_DEPTH} levels)")
    if mapping:
        _require_mapping(data, where)
    return data


def depth(value: Any) -> int:
    """Levels of nested mappings and lists (a scalar: 0), counted without recursion."""
    most, stack = 0, [(value, 0)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            most = max(most, level + 1)
            stack.extend((child, level + 1) for child in children)
    return most


def _require_mapping(data: Any, where: str, hint: str = "") -> None:
    if not isinstance(data, dict):
        shown = repr(data) if not isinstance(data, list | dict) or len(data) < 4 else type(data).__name__
        raise ConfigError(f"{where} must hold a mapping of sections (e.g. `train: {{steps: 10}}`), not {shown}{hint}")


def read_text(path: Path, what: str = "config file") -> str:
    """The UTF-8 text of a user's file, with one-line errors (missing, a folder, too large, not text)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError(f"{what} {path} is a folder; give the path of a YAML file")
        chunks, size = [], 0
        with path.open("rb") as f:  # in chunks: /dev/zero or a pipe never ends, and read(n) allocates n bytes
            while size <= MAX_BYTES and (chunk := f.read(2**16)):
                chunks.append(chunk)
                size += len(chunk)
        raw = b"".join(chunks)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_BYTES // 2**20} MiB; a config is a few kB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None


def read_yaml(path: Path, what: str = "config file") -> dict[str, Any]:
    """A user's YAML file as a mapping (``{}`` when empty), by the rules of this module."""
    return parse_yaml(read_text(path, what), f"{what} {path}")
