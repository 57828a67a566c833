"""Helpers the fault-injection tests share: snapshots of what must survive a fault, and waiting.

Tests import these from here (``from faultkit import ...``), not from conftest: when pytest collects
several test folders, ``import conftest`` may find another folder's conftest.

The suite's one promise is "nothing is lost". A test takes a :func:`snapshot` of every file that
already existed before it injects the fault, and :func:`assert_intact` afterwards raises
:class:`DataLost` (an ``AssertionError``) when one of them changed or vanished. The suite's report
(``tests/faults/conftest.py``) counts those failures in the "data lost" column.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository


class DataLost(AssertionError):
    """Something that existed before the fault changed or vanished: the one outcome never allowed."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def snapshot(root: Path, skip: Callable[[Path], bool] = lambda p: False) -> dict[str, str]:
    """Relative path -> sha256 of every regular file under ``root`` (a file or a folder)."""
    root = Path(root)
    if root.is_file():
        return {root.name: sha256(root)}
    return {
        str(p.relative_to(root)): sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and not skip(p)
    }


def assert_intact(root: Path, before: dict[str, str], what: str = "") -> None:
    """Raise :class:`DataLost` if any file of ``before`` is missing under ``root`` or changed."""
    root = Path(root)
    base = root.parent if root.is_file() else root
    missing, changed = [], []
    for rel, digest in before.items():
        path = base / rel
        if not path.is_file():
            missing.append(rel)
        elif sha256(path) != digest:
            changed.append(rel)
    if missing or changed:
        raise DataLost(
            f"{what or root}: {len(missing)} file(s) vanished {missing[:5]}, {len(changed)} changed {changed[:5]}"
        )


def wait_for(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.05) -> object:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def small_fs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "16m") mounted at ``where``: a disk that fills up. Root only: fails
    without root, unless ``MM1_NO_ROOT=1``, which skips the test."""
    import pytest

    if os.geteuid() != 0:
        if os.environ.get("MM1_NO_ROOT") == "1":
            pytest.skip("needs root to mount a small tmpfs (MM1_NO_ROOT=1 skips it)")
        pytest.fail("needs root to mount a small tmpfs (a disk that fills up); run as root or set MM1_NO_ROOT=1")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True, timeout=30
    )
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], timeout=30).returncode:
            subprocess.run(["umount", "-l", str(where)], check=True, timeout=30)
