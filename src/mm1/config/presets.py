"""Named presets: partial RunConfig YAML files that derive from each other, shipped inside the package.

The files are package data in ``src/mm1/config/preset_files/`` (one ``NAME.yaml`` per preset) and are
read through ``importlib.resources``, so an installed wheel finds them as a source checkout does.

A preset file lists only the keys it changes, plus an optional top-level ``base``:

* absent: a root preset, merged over the RunConfig defaults;
* ``base: NAME``: start from that preset, fully resolved;
* ``base: [A, B, ...]``: start from A, merge B over it, ... in order (later wins). Used to
  compose a decoder chain with an encoder chain (``mm1-3b: base: [mm1-ablation, llm-3b, vit-h14-378]``).
  Each chain's root sets every key its chain varies, so a later base replaces an earlier one's
  decoder (or encoder) whole and nothing leaks between them.

The merge is a deep merge of mappings (lists and scalars are replaced). The resolved run is named
after the preset; ``--config``, ``--config-json`` and ``--set`` are applied over it.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from mm1.config.load import ConfigError, from_dict
from mm1.config.readers import parse_yaml
from mm1.config.run import RunConfig

# The package's presets (mm1/config/preset_files/*.yaml). A pathlib.Path for a package installed
# from files (a wheel, an editable install), which is how mm1 is installed; the functions below
# take any folder-like ``Traversable``, so tests pass a tmp_path of their own.
PRESETS_DIR: Traversable = files("mm1.config") / "preset_files"


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, everything else is replaced (inputs untouched)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def available(directory: Traversable = PRESETS_DIR) -> list[str]:
    """Names of the presets in ``directory``, sorted (none when it is no folder)."""
    if not directory.is_dir():
        return []
    return sorted(f.name.removesuffix(".yaml") for f in directory.iterdir() if f.name.endswith(".yaml") and f.is_file())


def _bases(name: str, raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(b, str) for b in raw):
        return list(raw)
    raise ConfigError(f"preset {name!r}: base must be a preset name or a list of names, got {raw!r}")


def _read(name: str, directory: Traversable, chain: tuple[str, ...]) -> tuple[Traversable, dict[str, Any]]:
    """The preset's file and its own keys (``base`` included); ``chain`` is the presets that named it."""
    if name in chain:
        raise ConfigError(f"preset cycle: {' -> '.join((*chain, name))}")
    file = directory / f"{name}.yaml"
    if not file.is_file():
        names = ", ".join(available(directory)) or "(none)"
        where = f" (needed by {chain[-1]!r})" if chain else ""
        raise ConfigError(f"unknown preset {name!r}{where}; available presets: {names}")
    return file, parse_yaml(file.read_text(encoding="utf-8"), f"preset file {file}")


def _resolve(name: str, directory: Traversable, chain: tuple[str, ...]) -> dict[str, Any]:
    own = _read(name, directory, chain)[1]
    data: dict[str, Any] = {}
    for base in _bases(name, own.pop("base", None)):
        data = deep_merge(data, _resolve(base, directory, (*chain, name)))
    return deep_merge(data, own)


def preset_files(name: str, directory: Traversable = PRESETS_DIR) -> list[Traversable]:
    """The files a preset is built from: its bases' (recursively, in merge order) then its own, each once."""

    def walk(n: str, chain: tuple[str, ...]) -> list[Traversable]:
        file, own = _read(n, directory, chain)
        return [*(f for base in _bases(n, own.get("base")) for f in walk(base, (*chain, n))), file]

    return list(dict.fromkeys(walk(name, ())))


def preset_data(name: str, directory: Traversable = PRESETS_DIR) -> dict[str, Any]:
    """The preset's keys after resolving its bases (a partial RunConfig dict), named after it."""
    return {**_resolve(name, directory, ()), "name": name}


def load_preset(name: str, directory: Traversable = PRESETS_DIR) -> RunConfig:
    """The preset as a validated RunConfig."""
    return from_dict(preset_data(name, directory), f"preset {name}")
