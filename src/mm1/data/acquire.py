"""Acquisition of real datasets: download each source, verify its hash, read it, record what came.

For each SourceSpec the file at its URL lands in ``out_dir/<name>/<file name>``:

- http(s):// URLs stream through urllib to ``<file>.partial``; a download cut off is resumed with an
  HTTP Range request from the partial file's size (a server that ignores Range sends the whole file
  again, and the partial file is restarted). file:// URLs and local paths are copied the same way.
- A download is retried only when the network fails; a write that fails (disk full, quota, read-only
  file system), while downloading or extracting, raises AcquireError naming the file at once (a
  partial download is kept for a resume).
- The sha256 is checked before the file is renamed into place; a mismatch deletes the download and
  raises ChecksumError. A file already in place with the right hash is not fetched again.
- The file is read with its format's reader; bad samples go to the quarantine. Tar shards are read
  without extracting them; a coco / vqa / llava source that is a tar (JSON + image files) is
  extracted to ``<name>/extracted/`` with tarfile's ``data`` filter (absolute names refused too).
  Either way a member that could write outside its folder, a special file, or a member larger than
  the limit (webdataset's MAX_MEMBER_BYTES read in place, MAX_EXTRACTED_MEMBER_BYTES extracted, and
  never more than the archive holds: a sparse-file bomb) raises UnsafeArchiveError naming it before
  it is read or written; a truncated tar raises FormatError naming the file. A coco / vqa / llava
  source that is a bare JSON file is checked alone: its image files are not part of it.

``out_dir/quarantine.parquet`` is always written (also when a later check fails);
``out_dir/manifest.parquet`` only when every source is acquired, non-empty, and within
``max_bad_fraction``. The network is used only for the sources' URLs (and redirects they answer with).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlparse

import polars as pl

from mm1.atomic import write_with
from mm1.config.data import SourceSpec
from mm1.data import formats
from mm1.data.formats._common import Sink
from mm1.data.formats.text import json_lines
from mm1.data.formats.webdataset import UnsafeArchiveError, check_tar_end, strict_data_filter
from mm1.data.quarantine import Quarantine
from mm1.data.sources import ChecksumError as _FileChecksumError
from mm1.data.sources import sha256_file
from mm1.progress import progress

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = {
    "name": pl.Utf8,
    "url": pl.Utf8,
    "format": pl.Utf8,
    "role": pl.Utf8,
    "licence": pl.Utf8,
    "sha256": pl.Utf8,
    "bytes": pl.Int64,
    "samples": pl.Int64,
    "bad_samples": pl.Int64,
    "path": pl.Utf8,  # relative to out_dir
    "fetched_at": pl.Utf8,  # ISO 8601, UTC: when the file was written
}
CHUNK = 1 << 20
RETRY_WAITS_S = (0.0, 2.0, 10.0)
"""Seconds to wait before each retry of an interrupted download (so 1 + 3 attempts in all)."""
MAX_EXTRACTED_MEMBER_BYTES = 16 << 30
"""The largest member an archive source may extract (the biggest real annotation JSON is < 2 GiB)."""
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_+=,-][A-Za-z0-9_.+=,-]*$")
_SUFFIX = {"webdataset": ".tar", "obelics": ".parquet", "jsonl": ".jsonl"}


class AcquireError(RuntimeError):
    """A source could not be acquired: unreachable, unsupported URL, empty..."""


class ChecksumError(AcquireError, _FileChecksumError):
    """A downloaded file does not have the sha256 its SourceSpec names."""


class _Interrupted(Exception):
    """The download stopped early; try again from where it stopped."""


def acquire(
    sources: Sequence[SourceSpec], out_dir: Path, max_bad_fraction: float, timeout_s: float = 60
) -> pl.DataFrame:
    """Download, verify and read every source; write and return the manifest (columns MANIFEST_SCHEMA)."""
    out_dir = Path(out_dir)
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique, got {names}")
    quarantine, rows = Quarantine(), []
    try:
        for spec in sources:
            path = fetch(spec, out_dir / spec.name, timeout_s)
            samples = count_samples(spec, path, quarantine)
            rows.append(
                {
                    **{k: getattr(spec, k) for k in ("name", "url", "format", "role", "licence", "sha256")},
                    "bytes": path.stat().st_size,
                    "samples": samples,
                    "bad_samples": quarantine.rejected(spec.name),
                    "path": path.relative_to(out_dir).as_posix(),
                    "fetched_at": datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds"),
                }
            )
    except BaseException as e:  # the quarantine is written anyway, but never hides the first error
        try:
            quarantine.write(out_dir / "quarantine.parquet")
        except Exception as also:
            e.add_note(f"the quarantine could not be written to {out_dir} either: {also}")
        raise
    quarantine.write(out_dir / "quarantine.parquet")
    quarantine.check(max_bad_fraction, names)
    empty = [r["name"] for r in rows if r["samples"] == 0]
    if empty:
        raise AcquireError(f"sources {empty} hold no samples; check their URLs and formats")
    manifest = pl.DataFrame(rows, schema=MANIFEST_SCHEMA)
    write_with(out_dir / "manifest.parquet", lambda tmp: manifest.write_parquet(tmp))
    return manifest


# ---- download -------------------------------------------------------------------------------------


def fetch(spec: SourceSpec, folder: Path, timeout_s: float = 60) -> Path:
    """Put the verified file of ``spec`` at ``folder/<file name>`` and return that path."""
    dest = Path(folder) / file_name(spec)
    if dest.is_file():
        if sha256_file(dest) == spec.sha256:
            return dest
        log.warning("%s: %s does not have the expected hash; downloading it again", spec.name, dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    for attempt, wait in enumerate((None, *RETRY_WAITS_S)):
        if wait is not None:
            time.sleep(wait)
        try:
            _fetch_once(spec, partial, timeout_s)
            break
        except _Interrupted as e:
            log.warning("%s: download attempt %d interrupted (%s); resuming", spec.name, attempt + 1, e)
            last = e
    else:
        raise AcquireError(f"source {spec.name!r}: download of {spec.url} failed {attempt + 1} times; last: {last}")
    actual = sha256_file(partial)
    if actual != spec.sha256:
        partial.unlink()
        raise ChecksumError(
            f"source {spec.name!r}: {spec.url} has sha256 {actual}, expected {spec.sha256}; the download was deleted"
        )
    os.replace(partial, dest)
    return dest


def file_name(spec: SourceSpec) -> str:
    """The last component of the URL's path where it is a plain file name, else ``<name>.<suffix>``."""
    name = PurePosixPath(unquote(urlparse(spec.url).path)).name if "://" in spec.url else Path(spec.url).name
    if _FILE_NAME.match(name) and name != "extracted":
        return name
    return spec.name + _SUFFIX.get(spec.format, ".json")


def _fetch_once(spec: SourceSpec, partial: Path, timeout_s: float) -> None:
    """Continue ``partial`` from its size to the end; _Interrupted when the body stops short."""
    offset = partial.stat().st_size if partial.exists() else 0
    body, start, total = _open(spec, offset, timeout_s)
    written = start
    bar = progress(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=spec.name)
    with body, bar:
        try:
            with open(partial, "ab" if start else "wb") as f:
                while chunk := _read(body):
                    f.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
        except OSError as e:  # only writing: _read turns read errors into _Interrupted
            raise _write_error(spec, partial, e) from e
    if total is not None and written < total:
        raise _Interrupted(f"got {written} of {total} bytes")
    if total is not None and written > total:
        partial.unlink()
        raise _Interrupted(f"got {written} bytes, more than the announced {total}; starting again")


def _read(body: BinaryIO) -> bytes:
    try:
        return body.read(CHUNK)
    except (OSError, HTTPException) as e:
        raise _Interrupted(f"{type(e).__name__}: {e}") from e


def _write_error(spec: SourceSpec, partial: Path, e: OSError) -> AcquireError:
    """A local write failed (disk full, quota, read-only...): no retry helps, so say so at once."""
    return AcquireError(
        f"source {spec.name!r}: cannot write the download to {partial} ({e.strerror or e}; {_free(partial.parent)}); "
        "make room or point the acquire stage's output elsewhere, then run it again (the part already "
        "downloaded is kept and resumed)"
    )


def _free(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free} bytes free there"
    except OSError:
        return "free space unknown"


def _open(spec: SourceSpec, offset: int, timeout_s: float) -> tuple[BinaryIO, int, int | None]:
    """(body from byte ``start``, start, total size or None): start is ``offset`` where the source
    can resume there, else 0."""
    url = urlparse(spec.url)
    if url.scheme in ("http", "https"):
        return _open_http(spec, offset, timeout_s)
    if url.scheme == "file":
        path = Path(urllib.request.url2pathname(url.path))
    elif "://" not in spec.url:
        path = Path(spec.url)
    else:
        raise AcquireError(f"source {spec.name!r}: URL scheme {url.scheme!r} is not one of http, https, file")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise AcquireError(f"source {spec.name!r}: cannot read {path}: {e}") from e
    size = os.fstat(f.fileno()).st_size
    start = offset if offset <= size else 0
    f.seek(start)
    return f, start, size


def _open_http(spec: SourceSpec, offset: int, timeout_s: float) -> tuple[BinaryIO, int, int | None]:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        resp = urllib.request.urlopen(urllib.request.Request(spec.url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # the partial file is not a prefix of the file any more
            return _open_http(spec, 0, timeout_s)
        if e.code >= 500 or e.code in (408, 429):
            raise _Interrupted(f"HTTP {e.code} {e.reason}") from e
        raise AcquireError(f"source {spec.name!r}: {spec.url} answered HTTP {e.code} {e.reason}") from e
    except (OSError, HTTPException) as e:  # URLError, timeouts, connection resets
        raise _Interrupted(f"{type(e).__name__}: {e}") from e
    length = resp.headers.get("Content-Length")
    if resp.status == 206:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if match is None or int(match[1]) != offset:
            resp.close()
            return _open_http(spec, 0, timeout_s)
        return resp, offset, None if match[3] == "*" else int(match[3])
    # 200: the server ignored Range (or none was sent): the whole file comes again
    return resp, 0, int(length) if length is not None else None


# ---- reading --------------------------------------------------------------------------------------


def count_samples(spec: SourceSpec, path: Path, quarantine: Quarantine) -> int:
    """Read ``path`` as ``spec.format`` and return its good samples (bad ones go to ``quarantine``)."""
    before, name = quarantine.accepted(spec.name), spec.name
    if spec.format == "webdataset":
        _drain(formats.read_caption_shards([path], quarantine, name))
    elif spec.format == "obelics":
        _drain(formats.read_documents(path, quarantine, name))
    elif spec.format == "jsonl" and spec.role == "text":
        _drain(formats.read_text(path, quarantine, name))
    elif spec.format == "jsonl":  # items of another role: JSON objects with an id
        sink = Sink(quarantine, name, path)
        quarantine.accept(name, sum(1 for _ in json_lines(path, sink, {"id": str})))
    elif tarfile.is_tarfile(path):
        _read_extracted(spec, _extract(spec, path), quarantine)
    else:
        count = {"coco": formats.count_coco_captions, "vqa": formats.count_vqa, "llava": formats.count_llava}
        count[spec.format](path, quarantine, name)
    return quarantine.accepted(spec.name) - before


def _drain(it) -> None:
    for _ in it:
        pass


def _extract(spec: SourceSpec, path: Path) -> Path:
    """Extract the tar ``path`` to ``<its folder>/extracted`` with the ``data`` filter; return that folder."""
    dest = path.parent / "extracted"
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".extracting-"))
    try:
        with tarfile.open(path, "r:") as tar:
            tar.extractall(tmp, filter=_size_capped(spec, path))
            check_tar_end(path, tar.offset)
    except tarfile.FilterError as e:
        shutil.rmtree(tmp)
        raise UnsafeArchiveError(
            f"source {spec.name!r}: {path}: unsafe tar member {e.tarinfo.name!r} refused ({type(e).__name__}: {e})"
        ) from e
    except formats.FormatError:
        shutil.rmtree(tmp)
        raise
    except (tarfile.TarError, EOFError) as e:
        shutil.rmtree(tmp)
        raise formats.FormatError(f"source {spec.name!r}: {path}: truncated or corrupt tar archive ({e})") from e
    except OSError as e:  # writing the members: disk full, quota, read-only...
        shutil.rmtree(tmp)
        raise AcquireError(
            f"source {spec.name!r}: cannot extract {path} into {path.parent} ({e.strerror or e}; {_free(path.parent)})"
        ) from e
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def _size_capped(spec: SourceSpec, path: Path):
    """strict_data_filter, and a member larger than MAX_EXTRACTED_MEMBER_BYTES, or members adding up
    to more than the archive's own size (only sparse members can), raise UnsafeArchiveError before
    anything of it is written."""
    budget = path.stat().st_size
    total = 0

    def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        nonlocal total
        total += member.size
        too_big = None
        if member.size > MAX_EXTRACTED_MEMBER_BYTES:
            too_big = f"over the limit of {MAX_EXTRACTED_MEMBER_BYTES} bytes (MAX_EXTRACTED_MEMBER_BYTES)"
        elif total > budget:
            too_big = f"members add up to {total} bytes, more than the {budget}-byte archive holds (sparse?)"
        if too_big:
            raise UnsafeArchiveError(
                f"source {spec.name!r}: {path}: tar member {member.name!r} of {member.size} bytes refused: {too_big}"
            )
        return strict_data_filter(member, dest)

    return check


def _read_extracted(spec: SourceSpec, root: Path, quarantine: Quarantine) -> None:
    """Read every dataset file of an extracted coco / vqa / llava archive, images included."""
    name = spec.name
    if spec.format == "coco":
        for p in sorted(root.rglob("captions_*.json")):
            formats.read_coco_captions(p, quarantine=quarantine, source=name)
    elif spec.format == "vqa":
        for p in sorted(root.rglob("*_questions.json")):
            formats.read_vqa(p, quarantine=quarantine, source=name)
    else:
        for p in sorted(root.rglob("*.json")):
            formats.read_llava(p, quarantine=quarantine, source=name)
