"""Atomic writes of files and folders: a reader sees the old one or the new one, never half of one."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path


def _owner() -> str:
    """This process, as it appears in its temp files' names: ``<pid>-<host crc>`` (no dots)."""
    return f"{os.getpid()}-{zlib.crc32(socket.gethostname().encode()):08x}"


def _remove(path: Path) -> None:
    """Delete a file or a folder tree, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_stale(path: Path) -> None:
    """Delete temp files of ``path`` whose writer was killed (SIGKILL, SIGTERM: no ``finally`` ran).
    Only this host's, and only those whose process is gone; another live writer's are left alone."""
    host = _owner().split("-", 1)[1]
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid, _, crc = tmp.name[len(path.name) + 2 :].split(".", 1)[0].partition("-")
        if crc != host or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove(tmp)
        except PermissionError:  # alive, another user's
            pass


def write_with(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.
    Temp files that killed writers left beside ``path`` are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner()}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp makes 0600; artifacts are meant to be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_dir_with(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a new temporary folder beside ``path``, then put it in ``path``'s place:
    an old ``path`` (file or folder) is renamed aside first and deleted after, so ``path`` is always
    either the old one or the complete new one. Temp folders of killed writers are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{_owner()}.", suffix=".tmp"))
    aside = path.parent / f".{path.name}.{_owner()}.old.tmp"
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp makes 0700; artifacts are meant to be shared
        if path.exists() or path.is_symlink():
            os.replace(path, aside)
        os.replace(tmp, path)
    finally:
        _remove(tmp)
        _remove(aside)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode())
