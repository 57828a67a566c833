"""What every format reader shares: the error type, the reject-or-raise sink, image checks, JSON files."""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from mm1.atomic import write_bytes
from mm1.data.quarantine import Quarantine

IMAGE_EXTS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
"""PIL format name -> file extension written for images of that format."""
_FILE_PART = re.compile(r"^[A-Za-z0-9_.-]+$")


class FormatError(ValueError):
    """A file cannot be read as its format at all (truncated, not JSON, missing columns...), or a strict
    reader (no quarantine given) met a bad sample."""


class Sink:
    """Where a reader sends its verdicts on the samples of one file: with a quarantine, rejected samples
    are recorded and skipped; without one (strict reading), the first rejection raises FormatError."""

    def __init__(self, quarantine: Quarantine | None, source: str | None, file: Path) -> None:
        self.quarantine = quarantine
        self.file = Path(file)
        self.source = source if source is not None else self.file.name

    def reject(self, key: str, reason: str) -> None:
        if self.quarantine is None:
            raise FormatError(f"{self.file} [{key}]: {reason}")
        self.quarantine.add(self.source, self.file, key, reason)

    def accept(self) -> None:
        if self.quarantine is not None:
            self.quarantine.accept(self.source)


def image_problem(data: bytes) -> str | None:
    """None when PIL decodes ``data`` completely, else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb*...
        return f"image cannot be decoded ({type(e).__name__}: {e})"
    return None


def image_info(data: bytes) -> tuple[str, int, int]:
    """(file extension, width, height) of an encoded image, read from its header."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
    except Exception as e:
        raise ValueError(f"not an image PIL can read ({type(e).__name__}: {e})") from e
    if fmt not in IMAGE_EXTS:
        raise ValueError(f"image format {fmt} is not one of {sorted(IMAGE_EXTS)}")
    return IMAGE_EXTS[fmt], w, h


def load_json(path: Path) -> Any:
    """Parse a UTF-8 JSON file; FormatError naming the file when it is not one."""
    path = Path(path)
    if path.is_dir():
        raise FormatError(f"{path} is a folder, not a JSON file; give the file's path")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 ({e})") from e
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from e
    except RecursionError:
        raise FormatError(f"{path}: JSON nested too deeply to read") from None


def dump_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, UTF-8, trailing newline)."""
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_image(folder: Path, stem: str, data: bytes) -> str:
    """Write encoded image bytes, as they are, to ``folder/stem.<ext>``; return the file name."""
    ext, _, _ = image_info(data)
    name = f"{stem}.{ext}"
    write_bytes(Path(folder) / name, data)
    return name


def check_name(what: str, value: str) -> None:
    """ValueError unless ``value`` can be part of a file name."""
    if not _FILE_PART.match(value) or value in (".", ".."):
        raise ValueError(f"{what} {value!r} must be letters, digits, _ . or - (it becomes part of a file name)")


def safe_relative(rel: str) -> str | None:
    """None when ``rel`` is a relative path that stays inside its root, else why not."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel:
        return f"image path {rel!r} is not a relative path inside the image folder"
    return None


def read_image_file(root: Path, rel: str) -> tuple[bytes | None, str | None]:
    """(bytes, None) of the image ``root/rel``, or (None, why not): unsafe path, missing, undecodable."""
    problem = safe_relative(rel)
    if problem:
        return None, problem
    path = Path(root) / rel
    if not path.is_file():
        return None, f"image file {path} does not exist"
    data = path.read_bytes()
    problem = image_problem(data)
    return (None, problem) if problem else (data, None)


def check_fields(obj: Any, fields: dict[str, type | tuple[type, ...]]) -> str | None:
    """None when ``obj`` is a dict holding each field with the given type, else why not."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    for name, kind in fields.items():
        if name not in obj:
            return f"missing field {name!r}"
        value = obj[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            return f"field {name!r} has type {type(value).__name__}"
    return None


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
