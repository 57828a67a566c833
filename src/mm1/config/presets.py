"""Named presets: partial RunConfig YAML files in ``config/presets/`` that derive from each other.

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

from pathlib import Path
from typing import Any

from mm1.config.load import ConfigError, from_dict, read_yaml
from mm1.config.run import RunConfig

# The repository's presets (src/mm1/config/presets.py -> <repo>/config/presets).
PRESETS_DIR = Path(__file__).resolve().parents[3] / "config" / "presets"


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, everything else is replaced (inputs untouched)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def available(directory: Path = PRESETS_DIR) -> list[str]:
    """Names of the presets in ``directory``, sorted."""
    return sorted(p.stem for p in Path(directory).glob("*.yaml"))


def _bases(name: str, raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(b, str) for b in raw):
        return list(raw)
    raise ConfigError(f"preset {name!r}: base must be a preset name or a list of names, got {raw!r}")


def _resolve(name: str, directory: Path, chain: tuple[str, ...]) -> dict[str, Any]:
    if name in chain:
        raise ConfigError(f"preset cycle: {' -> '.join((*chain, name))}")
    path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(available(directory)) or "(none)"
        where = f" (needed by {chain[-1]!r})" if chain else ""
        raise ConfigError(f"unknown preset {name!r}{where}; available presets: {names}")
    own = read_yaml(path)
    data: dict[str, Any] = {}
    for base in _bases(name, own.pop("base", None)):
        data = deep_merge(data, _resolve(base, directory, (*chain, name)))
    return deep_merge(data, own)


def preset_data(name: str, directory: Path = PRESETS_DIR) -> dict[str, Any]:
    """The preset's keys after resolving its bases (a partial RunConfig dict), named after it."""
    return {**_resolve(name, directory, ()), "name": name}


def load_preset(name: str, directory: Path = PRESETS_DIR) -> RunConfig:
    """The preset as a validated RunConfig."""
    return from_dict(preset_data(name, directory), f"preset {name}")
