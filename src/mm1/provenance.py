"""Provenance written beside every stage output: config, git commit, package versions, seed, inputs.

``provenance.json`` answers "what made this folder?" without the workflow's logs: the resolved
config of the stage, the commit (and whether the tree was dirty), the versions of the packages
that shape results, the seed, and a content hash of every input.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from mm1 import atomic

PACKAGES = (
    "mm1",
    "torch",
    "megatron-core",
    "numpy",
    "polars",
    "pydantic",
    "tokenizers",
    "pillow",
    "snakemake",
    "dvc",
)
FILENAME = "provenance.json"


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """The commit of the source tree and whether it had uncommitted changes (None outside git)."""
    cwd = str(repo or Path.cwd())

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine() -> dict[str, Any]:
    """The machine a measurement ran on: CPU model, cores (all, and those this process may use),
    load (other work slows every number alike), platform and Python."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cores_used": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1m": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def hash_path(path: Path) -> str:
    """sha256 of a file, or of a folder's relative paths and file contents (sorted)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cannot record provenance: input {path} does not exist")
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f != path:
            digest.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def sections(cfg: Any, names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The named sections of a run config as JSON data: what a stage reads (mm1.stages), as its
    provenance and config.yaml record it."""
    return {k: getattr(cfg, k).model_dump(mode="json") for k in names}


def record(
    out_dir: Path,
    stage: str,
    config: dict[str, Any],
    seed: int | None,
    inputs: dict[str, Path] | None = None,
    extra: dict[str, Any] | None = None,
    prefix: str = "",
) -> Path:
    """Write ``out_dir/provenance.json`` and ``out_dir/config.yaml`` (the stage's resolved config);
    ``prefix`` names them ``<prefix>provenance.json`` / ``<prefix>config.yaml`` (several outputs per folder)."""
    out_dir = Path(out_dir)
    info = {
        "stage": stage,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "config": config,
        "git": git_state(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "inputs": {k: {"path": str(v), "sha256": hash_path(v)} for k, v in (inputs or {}).items()},
        **(extra or {}),
    }
    atomic.write_text(out_dir / f"{prefix}config.yaml", yaml.safe_dump(config, sort_keys=False))
    return atomic.write_text(out_dir / f"{prefix}{FILENAME}", json.dumps(info, indent=2, default=str) + "\n")
