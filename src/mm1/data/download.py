"""Downloads of the acquisition stage: each source's file, capped, hashed as it arrives, resumable.

:func:`fetch` brings one SourceSpec's file into its folder (the rules are in :mod:`mm1.data.acquire`'s
docstring: the cap, the streamed sha256, Range + If-Range resumes, retries only on network failures).
http(s)://, file:// and local paths are read here; every other scheme (s3://, gs://, az://, hf://,
memory://...) through fsspec, by :mod:`mm1.data.remote`, under the same rules.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NamedTuple
from urllib.parse import unquote, urlparse

from mm1 import __version__
from mm1.atomic import write_with
from mm1.config.data import SourceSpec
from mm1.data import remote
from mm1.data.sources import DataChecksumError, sha256_file
from mm1.progress import progress

log = logging.getLogger(__name__)
CHUNK = 1 << 20
RETRY_WAITS_S = (0.0, 2.0, 10.0)
"""Seconds to wait before each retry of an interrupted download (so 1 + 3 attempts in all)."""
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_+=,-][A-Za-z0-9_.+=,-]*$")
USER_AGENT = f"mm1/{__version__} (dataset acquisition for research pre-training)"
_SUFFIX = {"webdataset": ".tar", "obelics": ".parquet", "obelics_urls": ".parquet", "jsonl": ".jsonl"}


class AcquireError(RuntimeError):
    """A source could not be acquired: unreachable, unsupported URL, empty..."""


class DownloadChecksumError(AcquireError, DataChecksumError):
    """A downloaded file does not have the sha256 its SourceSpec names."""


class _Interrupted(Exception):
    """The download stopped early; try again from where it stopped."""


def fetch(spec: SourceSpec, folder: Path, timeout_s: float = 60) -> Path:
    """Put the verified file of ``spec`` at ``folder/<file name>`` and return that path."""
    dest = Path(folder) / file_name(spec)
    if dest.is_file():
        if sha256_file(dest) == spec.sha256:
            return dest
        log.warning("%s: %s does not have the expected hash; downloading it again", spec.name, dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    download = _Download(spec, dest.with_name(dest.name + ".partial"))
    for attempt, wait in enumerate((None, *RETRY_WAITS_S)):
        if wait is not None:
            time.sleep(wait)
        try:
            download._fetch_once(timeout_s)
            break
        except _Interrupted as e:
            log.warning("%s: download attempt %d interrupted (%s); resuming", spec.name, attempt + 1, e)
            last = e
        except remote.Unavailable as e:  # a file system's error while reading that no retry helps
            raise AcquireError(
                f"source {spec.name!r}: {e} ({download.written} bytes are kept in {download.partial})"
            ) from e
    else:
        raise AcquireError(
            f"source {spec.name!r}: download of {spec.url} failed {attempt + 1} times; last: {last} "
            f"({download.written} bytes are kept in {download.partial} and resumed by the next run)"
        )
    download.finish(dest)
    return dest


def file_name(spec: SourceSpec) -> str:
    """The last component of the URL's path where it is a plain file name, else ``<name>.<suffix>``."""
    if "://" not in spec.url:
        name = Path(spec.url).name
    else:
        url = urlparse(spec.url)
        where = url.netloc + url.path if remote.is_remote(spec.url) else url.path  # s3://bucket/key, memory://file
        name = PurePosixPath(unquote(where)).name
    if _FILE_NAME.match(name) and name != "extracted":
        return name
    return spec.name + _SUFFIX.get(spec.format, ".json")


class _Body(NamedTuple):
    stream: BinaryIO
    start: int  # the byte the stream starts at: the resume offset, or 0 for the whole file
    total: int | None  # the file's size, where the source says
    validator: str | None  # ETag, Last-Modified, or a local file's size and mtime: what a resume must match


class _Download:
    """One source's download into ``partial``: the bytes so far, their sha256 computed as they come
    (the file is never read a second time), and the validator that a resume sends as ``If-Range``
    (kept in ``<partial>.json`` for a later run). At most the cap (``bytes``, else ``max_bytes``)
    is ever written."""

    def __init__(self, spec: SourceSpec, partial: Path) -> None:
        self.spec, self.partial, self.state = spec, partial, partial.with_name(partial.name + ".json")
        self.cap = spec.bytes or spec.max_bytes
        self.digest, self.written, self.validator, self.pieces = hashlib.sha256(), 0, None, 0
        saved = self._saved_state()
        if saved is not None and self.partial.is_file() and self.partial.stat().st_size <= self.cap:
            self.validator, self.pieces = saved.get("validator"), 1
            with open(self.partial, "rb") as f:  # the part a killed run left: hashed once, then resumed
                while block := f.read(CHUNK):
                    self.digest.update(block)
                    self.written += len(block)

    def _saved_state(self) -> dict | None:
        try:
            state = json.loads(self.state.read_text())
        except (OSError, ValueError):
            return None
        same = isinstance(state, dict) and (state.get("url"), state.get("sha256")) == (self.spec.url, self.spec.sha256)
        return state if same else None

    def _fetch_once(self, timeout_s: float) -> None:
        """Continue from ``written`` to the end; _Interrupted when the body stops short."""
        spec = self.spec
        body = _open(spec, self.written, self.validator, timeout_s)
        bar = progress(
            total=body.total, initial=body.start, unit="B", unit_scale=True, unit_divisor=1024, desc=spec.name
        )
        with body.stream, bar:
            try:
                if body.start == 0:
                    self._restart(body.validator)
                self._check_announced(body.total)
                self.pieces += 1
                with open(self.partial, "ab") as f:
                    while chunk := _read(body.stream, min(CHUNK, self.cap - self.written + 1)):
                        if self.written + len(chunk) > self.cap:
                            raise self._discard(f"sent more than {self._cap_words()}")
                        f.write(chunk)
                        self.digest.update(chunk)
                        self.written += len(chunk)
                        bar.update(len(chunk))
            except OSError as e:  # only writing: _read turns read errors into _Interrupted
                raise _write_error(spec, self.partial, e) from e
        total = body.total if body.total is not None else spec.bytes
        if total is not None and self.written < total:
            raise _Interrupted(f"got {self.written} of {total} bytes")
        if body.total is not None and self.written > body.total:
            self._restart(None)
            raise _Interrupted(f"got more bytes than the announced {body.total}; starting again")

    def _restart(self, validator: str | None) -> None:
        """Start the file again from its first byte, remembering what a resume must match."""
        if self.written:
            log.warning("%s: the source sent the whole file; starting the download again", self.spec.name)
        self.digest, self.written, self.validator, self.pieces = hashlib.sha256(), 0, validator, 0
        self.partial.unlink(missing_ok=True)
        state = {"url": self.spec.url, "sha256": self.spec.sha256, "validator": validator}
        write_with(self.state, lambda tmp: tmp.write_text(json.dumps(state)))

    def _check_announced(self, total: int | None) -> None:
        """Refuse a size the source announces that cannot be right, before a byte is written."""
        declared = self.spec.bytes
        if total is not None and declared is not None and total != declared:
            raise self._discard(f"announces {total} bytes, but its entry declares bytes: {declared}")
        if total is not None and total > self.cap:
            raise self._discard(f"announces {total} bytes, more than {self._cap_words()}")

    def _cap_words(self) -> str:
        if self.spec.bytes is not None:
            return f"the {self.cap} bytes its entry declares (bytes)"
        return f"its cap of {self.cap} bytes (max_bytes; declare the file's size as bytes, or raise max_bytes)"

    def _discard(self, what: str) -> AcquireError:
        """Delete the download and say why: the source is not the file its entry describes."""
        self.partial.unlink(missing_ok=True)
        self.state.unlink(missing_ok=True)
        return AcquireError(
            f"source {self.spec.name!r}: {self.spec.url} {what}; the download was stopped and deleted "
            "(check the URL and the source's entry in data.sources)"
        )

    def finish(self, dest: Path) -> None:
        """Check the sha256 computed while downloading; rename the file into place."""
        actual = self.digest.hexdigest()
        if actual != self.spec.sha256:
            how = ""
            if self.pieces > 1 and self.validator is None:
                how = (
                    f" (the file was downloaded in {self.pieces} parts and the source sends no ETag or "
                    "Last-Modified, so a change of the file between them could not be seen: run again to "
                    "download it whole)"
                )
            self.partial.unlink(missing_ok=True)
            self.state.unlink(missing_ok=True)
            raise DownloadChecksumError(
                f"source {self.spec.name!r}: {self.spec.url} has sha256 {actual}, expected {self.spec.sha256}"
                f"{how}; the download was deleted"
            )
        os.replace(self.partial, dest)
        self.state.unlink(missing_ok=True)


def _read(body: BinaryIO, size: int) -> bytes:
    try:
        return body.read(size)
    except remote.Transient as e:  # a file system's network failure, already described
        raise _Interrupted(str(e)) from e
    except (OSError, HTTPException) as e:
        raise _Interrupted(f"{type(e).__name__}: {e}") from e


def _write_error(spec: SourceSpec, partial: Path, e: OSError) -> AcquireError:
    """A local write failed (disk full, quota, read-only...): no retry helps, so say so at once."""
    return AcquireError(
        f"source {spec.name!r}: cannot write the download to {partial} ({e.strerror or e}; {free_space_note(partial.parent)}); "
        "make room or point the acquire stage's output elsewhere, then run it again (the part already "
        "downloaded is kept and resumed)"
    )


def free_space_note(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free} bytes free there"
    except OSError:
        return "free space unknown"


def _open(spec: SourceSpec, offset: int, validator: str | None, timeout_s: float) -> _Body:
    """The source's bytes from ``offset`` where it can resume there with the same ``validator``,
    else from 0."""
    url = urlparse(spec.url)
    if url.scheme in ("http", "https"):
        return _open_http(spec, offset, validator, timeout_s)
    if url.scheme == "file":
        path = Path(urllib.request.url2pathname(url.path))
    elif "://" not in spec.url:
        path = Path(spec.url)
    else:
        return _open_remote(spec, offset, validator)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise AcquireError(f"source {spec.name!r}: cannot read {path}: {e}") from e
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):  # a device or a pipe (/dev/zero...): no size, no resume
        return _Body(f, 0, None, None)
    now = f"size {st.st_size} mtime_ns {st.st_mtime_ns}"
    start = offset if offset <= st.st_size and now == validator else 0
    f.seek(start)
    return _Body(f, start, st.st_size, now)


def _open_remote(spec: SourceSpec, offset: int, validator: str | None) -> _Body:
    """A file on a file system fsspec knows, resumed at ``offset`` where it is the same file still."""
    try:
        return _Body(*remote.open_file(spec.url, offset, validator))
    except remote.Transient as e:
        raise _Interrupted(str(e)) from e
    except remote.Unavailable as e:
        raise AcquireError(f"source {spec.name!r}: {e}") from e


def _open_http(spec: SourceSpec, offset: int, validator: str | None, timeout_s: float) -> _Body:
    headers = {"User-Agent": USER_AGENT} | ({"Range": f"bytes={offset}-"} if offset else {})
    if offset and validator:  # the rest of the same file, or (if it changed) the whole new file
        headers["If-Range"] = validator
    try:
        resp = urllib.request.urlopen(urllib.request.Request(spec.url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # the partial file is not a prefix of the file any more
            return _open_http(spec, 0, None, timeout_s)
        if e.code >= 500 or e.code in (408, 429):
            raise _Interrupted(f"HTTP {e.code} {e.reason}") from e
        raise AcquireError(f"source {spec.name!r}: {spec.url} answered HTTP {e.code} {e.reason}") from e
    except (OSError, HTTPException) as e:  # URLError, timeouts, connection resets
        raise _Interrupted(f"{type(e).__name__}: {e}") from e
    now = _validator(resp.headers)
    if resp.status == 206:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if match is None or int(match[1]) != offset or (validator and now and now != validator):
            resp.close()
            return _open_http(spec, 0, None, timeout_s)
        return _Body(resp, offset, None if match[3] == "*" else int(match[3]), validator)
    # 200: the whole file, because none was asked for, the server ignores Range, or (If-Range) it changed
    length = resp.headers.get("Content-Length")
    return _Body(resp, 0, int(length) if length is not None and length.isdigit() else None, now)


def _validator(headers) -> str | None:
    """A strong ETag, else Last-Modified: what If-Range can send (a weak ETag cannot be)."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


# ---- reading --------------------------------------------------------------------------------------
