"""Image-caption pairs as webdataset tar shards, the way web-scale caption datasets are stored.

A sample is the group of consecutive members that share a key (webdataset's rule: the member name
up to the first dot of its basename):

    000042.png            the image, raw encoded bytes (.png, .jpg, .jpeg or .webp)
    000042.txt            the alt-text caption  -> captions["alt"]
    000042.synthetic.txt  a caption of another style -> captions["synthetic"]
    000042.json           meta (a JSON object)

Writing is deterministic: fixed mtime/uid/gid/mode, members of a sample sorted by name, samples in
input order. Reading never extracts to disk, and never trusts tarfile's extraction filters (see
mm1.data.formats.safe_tar): a member whose name could leave its folder (absolute, ``..``, a drive), a link
of any kind (symbolic or hard, pointing inside or out), a device file or FIFO, a member larger than
MAX_MEMBER_BYTES (members are read into memory) or members claiming more bytes than the shard
holds (a sparse bomb) raise UnsafeArchiveError naming it before it is read. A truncated or corrupt
tar raises FormatError naming the file (the samples before the damage have been yielded by then).
Other bad samples go to the quarantine. Only plain (uncompressed) ``.tar`` shards are read.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from pathlib import Path

from mm1.atomic import write_with
from mm1.data.formats._common import FormatError, Sink, image_info, image_problem
from mm1.data.formats.safe_tar import Members, check_tar_end
from mm1.data.quarantine import Quarantine
from mm1.data.records import CaptionSample

IMAGE_MEMBERS = ("png", "jpg", "jpeg", "webp")
MAX_MEMBER_BYTES = 256 << 20
"""The largest member a shard may hold; a sample's image and texts are read into memory."""
MTIME = 0
"""Every member's mtime, so that the same samples give the same bytes."""
_KEY = re.compile(r"^[^./\\\x00]+$")
_STYLE = re.compile(r"^[A-Za-z0-9_-]+$")
_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's base_plus_ext


def write_caption_shards(
    samples: Iterable[CaptionSample], out_dir: Path, shard_size: int, prefix: str = "captions"
) -> list[Path]:
    """Write ``samples`` as ``out_dir/{prefix}-000000.tar`` ... with ``shard_size`` samples each
    (no shard for no samples), each published atomically; return the shard paths. Samples are taken
    from ``samples`` as they are written: one sample is held at a time, not a shard."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    it, seen, paths = iter(samples), set(), []
    while (first := next(it, None)) is not None:
        chunk = chain([first], islice(it, shard_size - 1))
        members = (m for sample in chunk for m in _members(sample, seen))
        path = Path(out_dir) / f"{prefix}-{len(paths):06d}.tar"
        paths.append(write_with(path, lambda tmp, members=members: _write_tar(tmp, members)))
    return paths


def _members(sample: CaptionSample, seen: set[str]) -> list[tuple[str, bytes]]:
    key = sample.key
    if not _KEY.match(key):
        raise ValueError(f"sample key {key!r} must be non-empty without '.', '/' or '\\' (webdataset keys)")
    if key in seen:
        raise ValueError(f"sample key {key!r} occurs twice")
    seen.add(key)
    if not sample.captions:
        raise ValueError(f"sample {key!r} has no caption")
    ext, _, _ = image_info(sample.image)
    members = {ext: sample.image, "json": json.dumps(sample.meta, sort_keys=True, ensure_ascii=False).encode()}
    for style, text in sample.captions.items():
        if not _STYLE.match(style):
            raise ValueError(f"sample {key!r}: caption style {style!r} must be letters, digits, _ or -")
        members["txt" if style == "alt" else f"{style}.txt"] = text.encode()
    return [(f"{key}.{ext}", data) for ext, data in sorted(members.items())]


def _write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def read_caption_shards(
    paths: Iterable[Path], quarantine: Quarantine | None = None, source: str | None = None
) -> Iterator[CaptionSample]:
    """Stream the samples of the shards in order. Bad samples are recorded in ``quarantine`` under
    ``source`` (default: the shard's file name); without a quarantine the first one raises FormatError."""
    for path in paths:
        sink = Sink(quarantine, source, Path(path))
        for key, members, problems in _groups(Path(path), sink):
            sample = _sample(key, members, problems, sink)
            if sample is not None:
                sink.accept()
                yield sample


def _groups(path: Path, sink: Sink) -> Iterator[tuple[str, dict[str, bytes], list[str]]]:
    """(key, {extension: bytes}, problems) per group of consecutive members sharing a key."""
    try:
        tar = tarfile.open(path, "r:")
    except (tarfile.ReadError, OSError) as e:
        raise FormatError(f"{path}: not a readable uncompressed tar archive ({e})") from e
    members_of = Members(path, MAX_MEMBER_BYTES, "MAX_MEMBER_BYTES, for a member read into memory")
    with tar:
        key, members, problems = None, {}, []
        try:
            for info in tar:
                name = "/".join(members_of.check(info))  # only regular files and folders pass
                if info.isdir():
                    continue
                match = _NAME.match(name)
                if match is None:
                    sink.reject(name, f"member {name!r} is not named key.extension")
                    continue
                if match[1] != key:
                    if key is not None:
                        yield key, members, problems
                    key, members, problems = match[1], {}, []
                if match[2] in members:
                    problems.append(f"member {name!r} occurs twice")
                else:
                    members[match[2]] = tar.extractfile(info).read()
            check_tar_end(path, tar.offset)
        except (tarfile.ReadError, EOFError) as e:
            raise FormatError(f"{path}: truncated or corrupt tar archive ({e})") from e
        if key is not None:
            yield key, members, problems


def _sample(key: str, members: dict[str, bytes], problems: list[str], sink: Sink) -> CaptionSample | None:
    def reject(reason: str) -> None:
        sink.reject(key, reason)

    if problems:
        return reject(problems[0])
    images = [ext for ext in members if ext in IMAGE_MEMBERS]
    if len(images) != 1:
        return reject(f"{len(images)} image members (.{', .'.join(IMAGE_MEMBERS)}); a sample needs exactly one")
    image = members[images[0]]
    if problem := image_problem(image):
        return reject(f"{key}.{images[0]}: {problem}")
    captions = {}
    for ext, data in members.items():
        if ext == "txt" or ext.endswith(".txt"):
            try:
                captions["alt" if ext == "txt" else ext[: -len(".txt")]] = data.decode("utf-8")
            except UnicodeDecodeError as e:
                return reject(f"{key}.{ext} is not UTF-8 ({e})")
    if not any(c.strip() for c in captions.values()):
        return reject("no caption: no non-empty .txt member")
    meta = {}
    if "json" in members:
        try:
            meta = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return reject(f"{key}.json is not UTF-8 JSON ({e})")
        if not isinstance(meta, dict):
            return reject(f"{key}.json is not a JSON object")
    return CaptionSample(key=key, image=image, captions=captions, meta=meta)
