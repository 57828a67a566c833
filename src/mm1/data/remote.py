"""Sources on other file systems, through fsspec: s3://, gs://, az://, hf://, memory://, any scheme it knows.

:mod:`mm1.data.download` keeps its own paths for http(s)://, file:// and local paths; every other
scheme comes here. :func:`open_file` gives the download the same four things an HTTP response gives
it (stream, start, size, validator), so the cap, the streamed sha256, the resume and the atomic
publish are the download's, unchanged:

- The file system is the one fsspec registers for the scheme (``hf://`` is huggingface_hub's
  ``HfFileSystem``, by its entry point). A scheme whose package is missing (s3fs, gcsfs, adlfs...)
  is :class:`Unavailable`, a one-line message naming the package to install.
- Credentials are never in mm1's config: each file system finds its own, as fsspec always does
  (``AWS_*`` or ``~/.aws`` for s3://, ``GOOGLE_APPLICATION_CREDENTIALS`` for gs://,
  ``AZURE_STORAGE_*`` for az://, ``HF_TOKEN`` or ``huggingface-cli login`` for hf://, fsspec's own
  config files and ``FSSPEC_*`` variables for options).
- A resume seeks the file to the partial download's size, when the file's size and validator
  (ETag, generation, blob id, modification time... whatever the file system's ``info`` gives) are
  those of the first attempt; otherwise the file comes whole again.
- An error is :class:`Transient` (the download retries and resumes it, as HTTP's network failures)
  when it is clearly the network's: a connection reset or timeout, an HTTP 5xx, 408 or 429 the
  file system passes on. A missing file, a refused access (401, 403, PermissionError) or anything
  else is :class:`Unavailable` at once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import fsspec
from fsspec.registry import known_implementations

BUILT_IN_SCHEMES = ("", "http", "https", "file")
"""Schemes mm1.data.download reads itself ("" is a local path)."""
CREDENTIALS = (
    "credentials come from the environment, never from the config: AWS_* for s3://, "
    "GOOGLE_APPLICATION_CREDENTIALS for gs://, AZURE_STORAGE_* for az://, HF_TOKEN for hf://"
)
_VALIDATOR_KEYS = ("ETag", "etag", "generation", "blob_id", "VersionId", "version_id", "LastModified")
_VALIDATOR_KEYS += ("last_modified", "updated", "mtime", "created")
_TRANSIENT_CLASSES = {
    "HTTPException",  # http.client (IncompleteRead...)
    "TransportError",  # httpx (huggingface_hub)
    "ClientConnectionError",  # aiohttp (gcsfs, fsspec's http)
    "ClientPayloadError",
    "HTTPClientError",  # botocore (s3fs): connection closed, read timeout, endpoint unreachable
    "ServiceRequestError",  # azure.core (adlfs)
    "ServiceResponseError",
    "ProtocolError",  # urllib3
}
"""Exception classes (by name: their packages are optional) that are network failures."""
_PATH_ERRORS = (IsADirectoryError, NotADirectoryError, FileExistsError)
_PERMANENT_CLASSES = {"OfflineModeIsEnabled"}  # huggingface_hub with HF_HUB_OFFLINE set: a ConnectionError


class Unavailable(Exception):
    """The file cannot be read and a retry would not help (the message names the URL and the fix)."""


class Transient(OSError):
    """A network failure while opening or reading: the download retries and resumes."""


class RemoteBody(NamedTuple):
    stream: Any  # a binary file object: read(n), close(), a context manager
    start: int
    total: int | None
    validator: str | None


def scheme(url: str) -> str:
    """The URL's scheme ("" for a local path)."""
    return url.split("://", 1)[0] if "://" in url else ""


def is_remote(url: str) -> bool:
    """Whether the URL is read through fsspec (any scheme but http, https and file; not a local path)."""
    return scheme(url).lower() not in BUILT_IN_SCHEMES


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system fsspec registers for the URL's scheme and the path on it (nothing is read)."""
    protocol = scheme(url)
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as e:
        missing = getattr(e.__cause__, "name", None) or known_implementations[protocol]["class"]
        package = missing.split(".")[0]
        raise Unavailable(
            f"{url}: reading {protocol}:// needs the Python package {package!r}, which is not installed "
            f"(pip install {package})"
        ) from e
    except ValueError as e:
        raise Unavailable(f"{url}: fsspec knows no file system for {protocol}://") from e
    try:
        return fsspec.core.url_to_fs(url)
    except Exception as e:
        raise classify(url, e) from e


def open_file(url: str, offset: int, validator: str | None) -> RemoteBody:
    """The file's bytes from ``offset`` when its size and validator are still ``validator``, else from 0."""
    fs, path = filesystem(url)
    try:
        info = fs.info(path)
    except Exception as e:
        raise classify(url, e) from e
    if info.get("type") == "directory":
        raise Unavailable(f"{url} is a directory; a source is one file (list each file as its own source)")
    size = info.get("size")
    now = _validator(info)
    f = _open(fs, path, url)
    start = offset if 0 < offset <= (size if size is not None else -1) and now == validator else 0
    if start:
        try:
            f.seek(start)
        except Exception:  # a stream that cannot seek (or fails to): the whole file again
            f.close()
            f, start = _open(fs, path, url), 0
    return RemoteBody(_Stream(f, url), start, size, now)


def classify(url: str, e: BaseException) -> Transient | Unavailable:
    """The error to raise for an exception of a file system: Transient when it is clearly the network's."""
    what = " ".join(f"{type(e).__name__}: {e}".split())[:400]
    status = _status(e)
    if isinstance(e, PermissionError) or status in (401, 403):
        return Unavailable(f"{url}: access refused ({what}); {CREDENTIALS}")
    if isinstance(e, FileNotFoundError) or status == 404:
        return Unavailable(f"{url} does not exist ({what}); check the source's url")
    names = {cls.__name__ for cls in type(e).__mro__}
    if status is not None:
        transient = status >= 500 or status in (408, 429)
    elif names & _PERMANENT_CLASSES or isinstance(e, _PATH_ERRORS):
        transient = False
    else:
        transient = isinstance(e, OSError) or bool(names & _TRANSIENT_CLASSES)
    return Transient(what) if transient else Unavailable(f"{url}: {what}")


def _status(e: BaseException) -> int | None:
    """The HTTP status an exception carries, under any of the names the file systems use."""
    response = getattr(e, "response", None)
    for value in (getattr(e, "status_code", None), getattr(e, "status", None), getattr(e, "code", None)):
        if isinstance(value, int) and 100 <= value < 600:
            return value
    value = getattr(response, "status_code", None)
    return value if isinstance(value, int) else None


def _validator(info: dict) -> str | None:
    """What a resume must find unchanged: the size and the first identity the file system reports."""
    size = info.get("size")
    for key in _VALIDATOR_KEYS:
        if info.get(key) is not None:
            return f"size {size} {key} {info[key]}"
    return None if size is None else f"size {size}"


def _open(fs: fsspec.AbstractFileSystem, path: str, url: str):
    try:
        return fs.open(path, "rb")
    except Exception as e:
        raise classify(url, e) from e


class _Stream:
    """A file system's file whose read errors are Transient (retried) or Unavailable."""

    def __init__(self, f, url: str) -> None:
        self.f, self.url = f, url

    def read(self, size: int = -1) -> bytes:
        try:
            return self.f.read(size)
        except Exception as e:
            raise classify(self.url, e) from e

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
