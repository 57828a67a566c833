"""Item 5 (archives): tar members that could write outside their folder, links of any kind, special
files and oversized members are refused with UnsafeArchiveError naming the member, both where a
webdataset shard is read in place and where acquire extracts a coco archive; nothing is written
outside the output folder. The cases include the shapes that get through tarfile's own ``data``
filter on Python 3.11.0-3.11.12 (CVE-2025-4517 and its family), with a control showing that the
first of them does escape tarfile's filter on this Python.
Item 8 (one case): a download whose local write fails is not retried as a network error.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import sys
import tarfile
from pathlib import Path

import pytest
from faultkit import small_fs
from PIL import Image

from mm1.config.data import SourceSpec
from mm1.data import acquire as acquire_module
from mm1.data import download as download_module
from mm1.data.acquire import AcquireError, acquire
from mm1.data.formats import UnsafeArchiveError, read_caption_shards, safe_tar
from mm1.data.formats import webdataset as webdataset_module
from mm1.data.quarantine import Quarantine

pytestmark = pytest.mark.faults(item=5)


def png(i: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (i * 40 % 256, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname, member.size = kind, link, size
    return member


def sparse_bomb(name: str, claimed: int) -> tuple[tarfile.TarInfo, bytes]:
    """A GNU sparse (PAX 1.0) member: 4 bytes of data that tarfile reports as ``claimed`` bytes."""
    member = info(name)
    member.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(claimed),
    }
    data = b"1\n0\n4\n".ljust(tarfile.BLOCKSIZE, b"\0") + b"abcd"
    member.size = len(data)
    return member, data


def pathmax_chain(target: str, payload: bytes = b"evil") -> list:
    """CVE-2025-4517's shape: folders with 247-character names reached through one-letter symlinks,
    a symlink whose resolved path passes PATH_MAX (so os.path.realpath stops resolving it and the
    data filter judges it inside), a symlink ``escape`` that climbs out through it to ``target``,
    and a file written through ``escape``."""
    long, steps, items, path = "d" * 247, "abcdefghijklmnop", [], ""
    for step in steps:
        items += [info(f"{path}{long}", tarfile.DIRTYPE), info(f"{path}{step}", tarfile.SYMTYPE, long)]
        path += f"{long}/"
    deep = "/".join(steps) + "/" + "l" * 254
    items += [info(deep, tarfile.SYMTYPE, "../" * len(steps)), info("escape", tarfile.SYMTYPE, f"{deep}/{target}")]
    return [*items, (info("escape/k9.txt", size=len(payload)), payload)]


# case -> the hostile member(s) (TarInfo, or (TarInfo, data)) added after a good sample; the first
# that is not a folder is the one refused
SPECIAL = {
    "chrdev": info("k9.png", tarfile.CHRTYPE),
    "blkdev": info("k9.png", tarfile.BLKTYPE),
    "fifo": info("k9.txt", tarfile.FIFOTYPE),
    "dotslash-dotdot": (info("./../evil.txt", size=4), b"evil"),
    "dotdot-deep": (info("k9/../../evil.txt", size=4), b"evil"),
    "absolute": (info("/tmp/mm1-evil.txt", size=4), b"evil"),
    "drive": (info("C:/evil.txt", size=4), b"evil"),
    "backslash": (info("..\\evil.txt", size=4), b"evil"),
    "symlink-chain-outside": [info("k9a.txt", tarfile.SYMTYPE, "k9b.txt"), info("k9b.txt", tarfile.SYMTYPE, "../evil")],
    "symlink-via-dir-outside": [info("d", tarfile.DIRTYPE), info("k9.txt", tarfile.SYMTYPE, "d/../../evil")],
    "symlink-pathmax-chain": pathmax_chain("../../../.."),  # CVE-2025-4517
    "hardlink-to-symlink-outside": [  # CVE-2025-4138 / 4330: the hardlink resolves through the symlink
        info("k9s.txt", tarfile.SYMTYPE, "../evil"),
        info("k9.txt", tarfile.LNKTYPE, "k9s.txt"),
    ],
    "symlink-named-like-a-parent": [  # CVE-2024-12718 / 2025-4435: a later member is written through it
        info("k9", tarfile.SYMTYPE, ".."),
        (info("k9/evil.txt", size=4), b"evil"),
    ],
    "symlink-inside": info("k9.txt", tarfile.SYMTYPE, "k0.txt"),  # harmless, still a link: refused
    "hardlink-absolute": info("k9.txt", tarfile.LNKTYPE, "/etc/passwd"),
    "hardlink-dotdot": info("k9.txt", tarfile.LNKTYPE, "../evil"),
    "sparse-bomb": sparse_bomb("k9.png", 1 << 40),
}


def hostile_tar(path: Path, case: str | None, before: list[tuple[str, bytes]]) -> Path:
    hostile = SPECIAL[case] if case else []
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in before:
            tar.addfile(info(name, size=len(data)), io.BytesIO(data))
        for item in hostile if isinstance(hostile, list) else [hostile]:
            member, data = item if isinstance(item, tuple) else (item, None)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def refused_name(case: str) -> str:
    hostile = SPECIAL[case] if isinstance(SPECIAL[case], list) else [SPECIAL[case]]
    members = [item[0] if isinstance(item, tuple) else item for item in hostile]
    return next(m.name for m in members if not m.isdir())


def files_outside(tmp_path: Path, out: Path) -> set[Path]:
    return {p for p in tmp_path.rglob("*") if out not in p.parents and p != out}


@pytest.mark.parametrize("case", sorted(SPECIAL))
def test_special_members_of_a_shard_are_refused_naming_them(tmp_path, case):
    shard = hostile_tar(tmp_path / "shard.tar", case, [("k0.png", png()), ("k0.txt", b"a ball")])
    q = Quarantine()
    with pytest.raises(UnsafeArchiveError) as e:
        list(read_caption_shards([shard], q, "s"))
    assert str(shard) in str(e.value) and repr(refused_name(case)) in str(e.value)


def coco_json() -> bytes:
    images = [{"id": 0, "file_name": "0.png"}]
    return json.dumps({"images": images, "annotations": [{"id": 1, "image_id": 0, "caption": "a ball"}]}).encode()


def spec(name: str, path: Path, fmt: str) -> SourceSpec:
    role = "caption" if fmt == "webdataset" else "benchmark"
    sha = download_module.sha256_file(path)
    return SourceSpec(name=name, url=str(path), sha256=sha, format=fmt, role=role, licence="CC0-1.0")


@pytest.mark.parametrize("fmt", ["webdataset", "coco"])
@pytest.mark.parametrize("case", sorted(SPECIAL))
def test_special_members_are_refused_by_acquire_and_nothing_lands_outside(tmp_path, case, fmt):
    origin, out = tmp_path / "origin", tmp_path / "a" / "out"
    origin.mkdir()
    out.parent.mkdir()
    good = [("k0.png", png()), ("k0.txt", b"a ball")] if fmt == "webdataset" else [("captions_val.json", coco_json())]
    path = hostile_tar(origin / "evil.tar", case, good)
    before = files_outside(tmp_path, out)
    with pytest.raises(UnsafeArchiveError) as e:
        acquire([spec("evil", path, fmt)], out, 1.0)
    assert repr(refused_name(case)) in str(e.value) and "evil.tar" in str(e.value)
    assert files_outside(tmp_path, out) == before
    assert not [p for p in out.rglob("*") if "extract" in p.name]  # no half-extracted folder left
    assert not (out / "manifest.parquet").exists()


def test_the_pathmax_chain_escapes_tarfiles_own_filter_on_this_python_and_mm1_refuses_it(tmp_path):
    """The control: tarfile's ``data`` filter alone (up to Python 3.11.12) extracts this archive's
    file four folders above the destination; mm1's extraction refuses it and writes nothing."""
    landed = {}
    for who in ("tarfile", "mm1"):
        dest = tmp_path / who / "a" / "b" / "c" / "dest"
        dest.mkdir(parents=True)
        path = hostile_tar(tmp_path / who / "chain.tar", "symlink-pathmax-chain", [])
        if who == "tarfile":
            with tarfile.open(path) as tar:
                try:
                    tar.extractall(dest, filter="data")
                except tarfile.FilterError:  # a patched Python
                    pass
        else:
            with pytest.raises(UnsafeArchiveError, match=r"unsafe tar member 'a' refused: it is a symbolic link"):
                safe_tar.extract(path, dest, 1 << 20, "a test limit")
        landed[who] = (tmp_path / who / "k9.txt").exists()
    assert landed == {"tarfile": sys.version_info < (3, 11, 13), "mm1": False}


def test_a_shard_member_over_the_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(webdataset_module, "MAX_MEMBER_BYTES", 1024)
    read = []
    extractfile = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: read.append(m.name) or extractfile(self, m))
    shard = hostile_tar(tmp_path / "big.tar", None, [("k0.png", png()), ("k0.txt", b"ok"), ("k1.txt", b"x" * 2048)])
    with pytest.raises(UnsafeArchiveError, match=r"'k1\.txt' of 2048 bytes.*1024"):
        list(read_caption_shards([shard], Quarantine(), "s"))
    assert "k1.txt" not in read and "k0.png" in read


def test_an_archive_member_over_the_size_limit_is_not_extracted(tmp_path, monkeypatch):
    monkeypatch.setattr(acquire_module, "MAX_EXTRACTED_MEMBER_BYTES", 1024)
    origin, out = tmp_path / "origin", tmp_path / "out"
    origin.mkdir()
    members = [("captions_val.json", coco_json()), ("images/val/0.png", png()), ("images/val/big.bin", b"x" * 4096)]
    path = hostile_tar(origin / "coco.tar", None, members)
    with pytest.raises(UnsafeArchiveError, match=r"'images/val/big\.bin' of 4096 bytes.*1024"):
        acquire([spec("coco", path, "coco")], out, 1.0)
    assert not list(out.rglob("big.bin")) and not [p for p in out.rglob("*") if "extract" in p.name]


def test_a_sparse_member_larger_than_its_archive_is_not_extracted(tmp_path):
    """Under the per-member limit, but more than the archive can hold: a sparse-file bomb."""
    origin, out = tmp_path / "origin", tmp_path / "out"
    origin.mkdir()
    path = origin / "coco.tar"
    member, data = sparse_bomb("images/val/0.png", 1 << 30)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info("captions_val.json", size=len(coco_json())), io.BytesIO(coco_json()))
        tar.addfile(member, io.BytesIO(data))
    assert os.path.getsize(path) < 1 << 20
    with pytest.raises(UnsafeArchiveError, match=r"'images/val/0\.png' of 1073741824 bytes.*more than the"):
        acquire([spec("coco", path, "coco")], out, 1.0)
    assert not [p for p in out.rglob("*") if "extract" in p.name]


# ---- item 8: a full disk is not a network error ---------------------------------------------------


class FailingWrites(io.RawIOBase):
    """A file open for writing whose every write fails with ``code``."""

    def __init__(self, path: Path, code: int) -> None:
        self.path, self.code = path, code

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        raise OSError(self.code, os.strerror(self.code), str(self.path))


@pytest.mark.faults(item=8)
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS], ids=errno.errorcode.get)
def test_a_write_error_while_downloading_fails_at_once_naming_the_file(tmp_path, monkeypatch, code):
    origin = tmp_path / "origin"
    origin.mkdir()
    source = origin / "corpus.jsonl"
    source.write_bytes(b'{"id": "d0", "text": "a document"}\n' * 100)
    writes, waits = [], []

    def fake_open(path, mode="r", *args, **kwargs):
        if "w" in mode or "a" in mode:
            writes.append(Path(path))
            return FailingWrites(Path(path), code)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(download_module, "open", fake_open, raising=False)
    monkeypatch.setattr(download_module.time, "sleep", waits.append)
    out = tmp_path / "out"
    src = text_source(source)
    with pytest.raises(AcquireError) as e:
        acquire([src], out, 1.0)
    partial = out / "text" / "corpus.jsonl.partial"
    assert writes == [partial] and waits == []  # one attempt, no retry
    message = str(e.value)
    assert str(partial) in message and os.strerror(code) in message and re.search(r"\d+ bytes free", message)
    assert "times" not in message  # not "download ... failed 4 times"
    assert not (out / "text" / "corpus.jsonl").exists() and not (out / "manifest.parquet").exists()


def text_source(path: Path) -> SourceSpec:
    """A jsonl text source read from the local file ``path``."""
    return SourceSpec(
        name="text",
        url=str(path),
        sha256=download_module.sha256_file(path),
        format="jsonl",
        role="text",
        licence="CC0-1.0",
    )


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs at ``tmp_path/fs`` (root only), unmounted afterwards."""
    with small_fs(tmp_path / "fs", "256k") as mount:
        yield mount


@pytest.mark.faults(item=8)
@pytest.mark.root
def test_a_download_bigger_than_the_free_space_fails_at_once(tmp_path, tiny_fs, monkeypatch):
    source = tmp_path / "corpus.jsonl"
    source.write_bytes(b'{"id": "d0", "text": "a document"}\n' * 20_000)  # 700 KB > 256 KiB
    waits = []
    monkeypatch.setattr(download_module.time, "sleep", waits.append)
    src = text_source(source)
    with pytest.raises(AcquireError, match=r"corpus\.jsonl\.partial \(No space left on device; \d+ bytes free"):
        acquire([src], tiny_fs / "out", 1.0)
    assert waits == []


@pytest.mark.faults(item=8)
@pytest.mark.root
def test_an_archive_that_does_not_fit_when_extracted_is_a_disk_error_not_a_corrupt_tar(tmp_path, tiny_fs):
    origin = tmp_path / "origin"
    origin.mkdir()
    big = bytes(range(256)) * 600  # 150 KiB: the archive fits in 256 KiB, archive + extracted copy do not
    path = hostile_tar(origin / "coco.tar", None, [("captions_val.json", coco_json()), ("images/val/0.png", big)])
    out = tiny_fs / "out"
    with pytest.raises(AcquireError, match=r"cannot extract .*coco\.tar .*\(No space left on device; \d+ bytes free"):
        acquire([spec("coco", path, "coco")], out, 1.0)
    assert not [p for p in out.rglob("*") if "extract" in p.name]
