"""Tar archives judged and extracted by mm1 itself, never by tarfile's extraction filters.

tarfile's ``data`` filter cannot be trusted on the Pythons mm1 supports: 3.11.0-3.11.3 have no
``filter`` argument, and up to 3.11.12 chains of symlinks and hardlinks whose resolved path leaves
the folder get through it (CVE-2025-4517, CVE-2025-4138, CVE-2025-4330, CVE-2025-4435,
CVE-2024-12718). So every member is judged here, in archive order, before any of its bytes is read:

- its name is normalised (``./a//b`` is ``a/b``) and must stay inside the folder: no absolute name,
  no ``..`` component, no drive (``C:``), no backslash, no NUL;
- it must be a regular file or a directory: links of any kind (symbolic or hard, pointing inside
  or out), device files and FIFOs are refused, so no chain of links can ever be followed;
- it must not be larger than the caller's limit, and the members together must not claim more
  bytes than the archive file holds (only a sparse member can: a sparse-file bomb).

A refused member raises UnsafeArchiveError naming the archive and the member. ``extract`` then
writes every member itself: each folder is opened one component at a time relative to its parent
with ``O_NOFOLLOW | O_DIRECTORY`` (an existing symlink or file in the way is refused, never
followed), and each file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a member that occurs
twice, or would replace anything already there, is refused) and filled from ``extractfile``.
Files get mode 0644 and folders 0755 (less the umask), whatever the archive says.

The webdataset reader (:mod:`mm1.data.formats.webdataset`) judges its shards' members here too.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tarfile
from pathlib import Path

from mm1.data.formats._common import FormatError

CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeArchiveError(FormatError):
    """A tar member mm1 refuses to read or extract (it could write outside its folder, is a link,
    a special file, or too large); see this module."""


def check_tar_end(path: Path, offset: int) -> None:
    """A complete tar ends with two zero blocks after its last member; tarfile alone does not
    notice a file cut off at (or inside) a member header."""
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read(2 * tarfile.BLOCKSIZE)
    if len(tail) < 2 * tarfile.BLOCKSIZE or tail.strip(b"\0"):
        raise FormatError(
            f"{path}: truncated tar archive (no end-of-archive blocks after byte {offset}; "
            f"file has {path.stat().st_size} bytes)"
        )


class Members:
    """Judges the members of one archive, in order (the size budget spans the whole archive)."""

    def __init__(self, archive: Path, max_member_bytes: int, limit_name: str) -> None:
        self.archive, self.max_member_bytes, self.limit_name = Path(archive), max_member_bytes, limit_name
        self.budget = self.archive.stat().st_size
        self.total = 0

    def check(self, member: tarfile.TarInfo) -> tuple[str, ...]:
        """The normalised path components of a regular file or directory member (``()`` for the
        folder itself, ``./``); UnsafeArchiveError for anything else."""
        parts = self._parts(member)
        if not (member.isreg() or member.isdir()):
            kind = _KINDS.get(member.type, f"of tar type {member.type!r}")
            self.refuse(member, f"it is {kind}; only regular files and folders are allowed")
        self.total += member.size
        if member.size > self.max_member_bytes:
            self.refuse_size(member, f"over the limit of {self.max_member_bytes} bytes ({self.limit_name})")
        if self.total > self.budget:
            self.refuse_size(
                member,
                f"members add up to {self.total} bytes, more than the {self.budget}-byte archive holds (sparse?)",
            )
        return parts

    def _parts(self, member: tarfile.TarInfo) -> tuple[str, ...]:
        name = member.name
        if "\0" in name or "\\" in name:
            self.refuse(member, "its name holds a NUL or a backslash")
        if name.startswith("/") or _DRIVE.match(name):
            self.refuse(member, "its name is absolute")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            self.refuse(member, "its name has a '..' component")
        if not parts and not member.isdir():
            self.refuse(member, "its name is empty")
        return parts

    def refuse(self, member: tarfile.TarInfo, why: str) -> None:
        raise UnsafeArchiveError(f"{self.archive}: unsafe tar member {member.name!r} refused: {why}")

    def refuse_size(self, member: tarfile.TarInfo, why: str) -> None:
        raise UnsafeArchiveError(f"{self.archive}: tar member {member.name!r} of {member.size} bytes refused: {why}")


def extract(archive: Path, dest: Path, max_member_bytes: int, limit_name: str) -> None:
    """Extract the plain tar ``archive`` into the existing folder ``dest`` (empty: a member may not
    replace anything). UnsafeArchiveError for a refused member, FormatError for a truncated archive,
    tarfile.TarError for a corrupt one, OSError when writing fails (disk full...)."""
    members = Members(archive, max_member_bytes, limit_name)
    root = os.open(dest, _DIR_FLAGS)
    try:
        with tarfile.open(archive, "r:") as tar:
            for member in tar:
                parts = members.check(member)
                if member.isdir():
                    os.close(_open_folder(root, parts, members, member))
                else:
                    _write(tar, member, root, parts, members)
            check_tar_end(Path(archive), tar.offset)
    finally:
        os.close(root)


def _open_folder(root: int, parts: tuple[str, ...], members: Members, member: tarfile.TarInfo) -> int:
    """A descriptor of the folder ``root/parts...``, made where missing, never through a link."""
    fd = os.dup(root)
    for i, part in enumerate(parts):
        try:
            child = _child_folder(fd, part)
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.ELOOP):
                members.refuse(member, f"{'/'.join(parts[: i + 1])} is not a folder (a file or a link is there)")
            raise
        finally:
            os.close(fd)
        fd = child
    return fd


def _child_folder(fd: int, name: str) -> int:
    try:
        os.mkdir(name, 0o755, dir_fd=fd)
    except FileExistsError:
        pass
    return os.open(name, _DIR_FLAGS, dir_fd=fd)


def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, root: int, parts: tuple[str, ...], members: Members) -> None:
    folder = _open_folder(root, parts[:-1], members, member)
    try:
        fd = os.open(parts[-1], _FILE_FLAGS, 0o644, dir_fd=folder)
    except FileExistsError:
        members.refuse(member, "something of that name is already there (a member may not replace another)")
    finally:
        os.close(folder)
    source = tar.extractfile(member)
    with os.fdopen(fd, "wb") as out, source:
        shutil.copyfileobj(source, out, CHUNK)
