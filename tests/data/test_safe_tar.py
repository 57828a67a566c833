"""mm1.data.formats.safe_tar: extraction that trusts neither the archive nor tarfile's filters.

The hostile shapes (links out, CVE-2025-4517 and its family, devices, sparse bombs) are in
tests/faults/test_hostile_archives.py; here: what is extracted, and what an existing folder cannot
make it do (write through a symlink already there, replace a file).
"""

from __future__ import annotations

import io
import os
import stat
import tarfile

import pytest

from mm1.data.formats import UnsafeArchiveError
from mm1.data.formats.safe_tar import extract


def make_tar(path, members):
    """members: (name, bytes) for a file, (name, None) for a folder; each with mode 0o6777."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o6777  # setuid, setgid, world-writable: never kept
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


def test_files_and_folders_are_extracted_with_plain_modes(tmp_path):
    path = make_tar(
        tmp_path / "a.tar",
        [("./", None), ("a", None), ("a/b.txt", b"bee"), ("./c.txt", b"see"), ("d//e/f.txt", b"f"), ("a", None)],
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    extract(path, dest, 1 << 20, "a test limit")
    assert tree(dest) == {"a": None, "a/b.txt": b"bee", "c.txt": b"see", "d": None, "d/e": None, "d/e/f.txt": b"f"}
    umask = os.umask(0)
    os.umask(umask)
    for p in dest.rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644) & ~umask


@pytest.fixture
def outside(tmp_path):
    """A folder beside the destination that nothing may reach."""
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def test_a_symlink_already_in_the_folder_is_never_written_through(tmp_path, outside):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "d").symlink_to(outside)
    (dest / "f.txt").symlink_to(outside / "f.txt")
    for name, why in [("d/x.txt", "d is not a folder"), ("f.txt", "already there")]:
        path = make_tar(tmp_path / "a.tar", [(name, b"evil")])
        with pytest.raises(UnsafeArchiveError, match=f"{name!r} refused: .*{why}"):
            extract(path, dest, 1 << 20, "a test limit")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    "members, refused, why",
    [
        ([("k.txt", b"one"), ("k.txt", b"two")], "k.txt", "already there"),
        ([("k", b"file"), ("k/x.txt", b"x")], "k/x.txt", "k is not a folder"),
        ([("k", None), ("k", b"file")], "k", "already there"),
    ],
    ids=["twice", "file-then-child", "folder-then-file"],
)
def test_a_member_may_not_replace_another(tmp_path, members, refused, why):
    path = make_tar(tmp_path / "a.tar", members)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match=f"{refused!r} refused: .*{why}"):
        extract(path, dest, 1 << 20, "a test limit")
    first, data = members[0]
    assert (dest / first).read_bytes() == data if data is not None else (dest / first).is_dir()


@pytest.mark.parametrize("size, ok", [(64, True), (65, False)])
def test_the_member_limit_is_inclusive(tmp_path, size, ok):
    path = make_tar(tmp_path / "a.tar", [("k.bin", b"x" * size)])
    dest = tmp_path / "dest"
    dest.mkdir()
    if ok:
        extract(path, dest, 64, "LIMIT")
        assert (dest / "k.bin").stat().st_size == size
    else:
        with pytest.raises(
            UnsafeArchiveError, match=r"'k\.bin' of 65 bytes refused: over the limit of 64 bytes \(LIMIT\)"
        ):
            extract(path, dest, 64, "LIMIT")
        assert not (dest / "k.bin").exists()
