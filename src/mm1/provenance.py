"""Provenance written beside every stage output: config, git commit, package versions, seed, inputs.

``provenance.json`` answers "what made this folder?" without the workflow's logs: the resolved
config of the stage, the commit (and whether the tree was dirty), the versions of the packages
that shape results, the seed, and a digest of every input (:func:`hash_path`; its ``method`` says
which rule made it).

Inputs are recorded without re-reading large ones (a 60 GB checkpoint took minutes per job at
0.23 GB/s, once in every downstream job):

* ``"manifest"``: a checkpoint folder sealed with ``checksums.json`` (:mod:`mm1.train.checksums`:
  the size and sha256 of every file, checked before anything of it is loaded) is recorded as the
  sha256 of that manifest: it names the folder's contents, and a shard that changes fails the
  load's check unless the manifest changes too, which changes the digest;
* ``"stat"``: any other file or folder of ``LARGE_BYTES`` or more: the sha256 of its listing,
  each file's relative path, size and modification time (ns). It notices a rewrite or a resize,
  not an edit that keeps both (DVC's own content hash in dvc.lock covers that case);
* ``"sha256"``: everything smaller: the sha256 of the file, or of a folder's relative paths and
  file contents (sorted), as before.
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
    "pyarrow",
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


MANIFEST = "checksums.json"  # mm1.train.checksums.MANIFEST (that room imports this one; a test holds them equal)
LARGE_BYTES = 1 << 30  # 1 GiB: ~4 s of sha256 at the measured 0.23 GB/s; inputs this big are fingerprinted


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def input_digest(path: Path) -> tuple[str, str]:
    """(digest, method) of an input (module docstring: "manifest", "stat" or "sha256")."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cannot record provenance: input {path} does not exist")
    if path.is_dir() and (path / MANIFEST).is_file():
        return _sha256([path / MANIFEST], path / MANIFEST), "manifest"
    files = _files(path)
    stats = [(f, f.stat()) for f in files]
    if sum(st.st_size for _, st in stats) >= LARGE_BYTES:
        listing = "".join(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n"
                          for f, st in stats)  # fmt: skip
        return hashlib.sha256(listing.encode()).hexdigest(), "stat"
    return _sha256(files, path), "sha256"


def _sha256(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for f in files:
        if f != root:
            digest.update(str(f.relative_to(root)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def hash_path(path: Path) -> str:
    """The digest :func:`record` writes for an input (:func:`input_digest`): the sha256 of a small
    file or folder's contents, of a sealed checkpoint's manifest, or of a large input's listing."""
    return input_digest(path)[0]


def _input(path: Path) -> dict[str, str]:
    digest, method = input_digest(path)
    return {"path": str(path), "sha256": digest, "method": method}


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
        "inputs": {k: _input(v) for k, v in (inputs or {}).items()},
        **(extra or {}),
    }
    atomic.write_text(out_dir / f"{prefix}config.yaml", yaml.safe_dump(config, sort_keys=False))
    return atomic.write_text(out_dir / f"{prefix}{FILENAME}", json.dumps(info, indent=2, default=str) + "\n")
