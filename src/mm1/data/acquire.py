"""Acquisition of real datasets: download each source, verify its hash, read it, record what came.

For each SourceSpec the file at its URL lands in ``out_dir/<name>/<file name>``:

- http(s):// URLs stream through urllib to ``<file>.partial``; file:// URLs and local paths are
  copied the same way; any other scheme (s3://, gs://, az://, hf://, memory://...) is read through
  fsspec by mm1.data.remote under the same cap, hash and publish rules. At most the source's cap is ever written (its declared ``bytes``, else
  ``max_bytes``): a size announced over it, or different from the declared one, is refused before
  a byte is written, and a source that sends more (a URL that never ends, /dev/zero) is stopped at
  the cap; either way AcquireError names the source and the cap, and the download is deleted.
- The sha256 is computed while the bytes arrive (never by reading the file again) and checked
  before the file is renamed into place; a mismatch deletes the download and raises DownloadChecksumError.
  A file already in place with the right hash is not fetched again.
- A download cut off is resumed with an HTTP Range request from the partial file's size, with
  ``If-Range`` set to the first response's strong ETag (else Last-Modified), kept in
  ``<file>.partial.json`` for a later run: a file that changed meanwhile comes whole again instead
  of being spliced onto the old part (a local file is resumed only with the same size and mtime; a
  file on another file system by seeking to the partial size when its size and identity are unchanged).
  A server that ignores Range sends the whole file again, and the partial file is restarted.
- A download is retried only when the network fails; a write that fails (disk full, quota, read-only
  file system), while downloading or extracting, raises AcquireError naming the file at once (a
  partial download is kept for a resume).
- The file is read with its format's reader; bad samples go to the quarantine. Tar shards are read
  without extracting them; a coco / vqa / llava source that is a tar (JSON + image files) is
  extracted to ``<name>/extracted/`` by mm1.data.formats.safe_tar, never by tarfile's filters. Either way
  a member whose name could leave its folder, a link of any kind, a special file, or a member
  larger than the limit (webdataset's MAX_MEMBER_BYTES read in place, MAX_EXTRACTED_MEMBER_BYTES
  extracted, and never more than the archive holds: a sparse-file bomb) raises UnsafeArchiveError
  naming it before it is read or written; a truncated tar raises FormatError naming the file. A
  coco / vqa / llava source that is a bare JSON file is checked alone: its images are not part of it.

Sources of format obelics_urls (the released OBELICS parquet) and url_captions (URL + caption
tables) hold image URLs: after the file is verified, mm1.data.fetch_images fetches the images
(parallel, per-host rate limit, retries, resumable cache in ``<name>/images/``) a block at a time and
writes what came as ``<name>/fetched/documents.parquet`` (obelics) or ``<name>/fetched/captions-000000.tar``,
``-000001.tar``... (webdataset). The manifest has one row per file, with its format and sha256; each
carries the source's counts of image URLs tried (``images``) and missing (``images_missing``); more
missing than ``data.fetch.max_missing_fraction`` raises AcquireError. Missing images are in the
quarantine but are not bad samples.

``out_dir/quarantine.parquet`` is always written (also when a later check fails);
``out_dir/manifest.parquet`` only when every source is acquired, non-empty, and within
``max_bad_fraction``. The network is used only for the sources' URLs (and redirects they answer with;
for s3:// and gs:// without credentials in the environment, also the cloud's metadata service, as
their clients always do).
"""

from __future__ import annotations

import logging
import re
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from mm1.atomic import write_with
from mm1.config.data import FetchConfig, SourceSpec
from mm1.data import formats
from mm1.data.download import AcquireError, fetch, free_space_note
from mm1.data.formats import safe_tar
from mm1.data.formats._common import Sink
from mm1.data.formats.text import json_lines
from mm1.data.materialise import materialise
from mm1.data.quarantine import Quarantine
from mm1.data.sources import sha256_file

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = {  # one row per file; a URL source that became several files has one row per file
    "name": pl.Utf8,
    "url": pl.Utf8,
    "format": pl.Utf8,
    "role": pl.Utf8,
    "licence": pl.Utf8,
    "sha256": pl.Utf8,
    "bytes": pl.Int64,
    "samples": pl.Int64,  # this file's (a source's are the sum over its rows)
    "bad_samples": pl.Int64,  # the source's, the same on each of its rows (malformed rows of its table)
    "path": pl.Utf8,  # relative to out_dir
    "fetched_at": pl.Utf8,  # ISO 8601, UTC: when the file was written
    "images": pl.Int64,  # the source's distinct image URLs tried (obelics_urls, url_captions; 0 for other
    # formats), the same on each of its rows: max_missing_fraction is per source and a URL can feed several files
    "images_missing": pl.Int64,  # of them, not fetched (dead, opted out, not an image...); the source's too
}
MAX_EXTRACTED_MEMBER_BYTES = 16 << 30
"""The largest member an archive source may extract (the biggest real annotation JSON is < 2 GiB)."""
_FILE_NAME = re.compile(r"^[A-Za-z0-9_+=,-][A-Za-z0-9_.+=,-]*$")
URL_FORMATS = ("obelics_urls", "url_captions")
"""Formats whose images are URLs, fetched by mm1.data.fetch_images after the source file is verified."""


def acquire(
    sources: Sequence[SourceSpec],
    out_dir: Path,
    max_bad_fraction: float,
    timeout_s: float = 60,
    fetch_cfg: FetchConfig | None = None,
) -> pl.DataFrame:
    """Download, verify and read every source; write and return the manifest (columns MANIFEST_SCHEMA).
    The images of obelics_urls / url_captions sources are fetched as ``fetch_cfg`` says (default: the
    defaults of data.fetch) and the manifest lists the files they became (mm1.data.fetch_images)."""
    out_dir = Path(out_dir)
    fetch_cfg = fetch_cfg or FetchConfig()
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique, got {names}")
    quarantine, missing, rows = Quarantine(), Quarantine(), []
    try:
        for spec in sources:
            path = fetch(spec, out_dir / spec.name, timeout_s)
            if spec.format in URL_FORMATS:
                rows.extend(_url_source_rows(spec, path, out_dir, fetch_cfg, quarantine, missing))
                continue
            samples = count_samples(spec, path, quarantine)
            rows.append(_row(spec, out_dir, path, spec.sha256, samples, quarantine.rejected(spec.name)))
    except BaseException as e:  # the quarantine is written anyway, but never hides the first error
        try:
            _write_quarantine(out_dir, quarantine, missing)
        except Exception as also:
            e.add_note(f"the quarantine could not be written to {out_dir} either: {also}")
        raise
    _write_quarantine(out_dir, quarantine, missing)
    quarantine.check(max_bad_fraction, names)
    empty = [n for n in names if sum(r["samples"] for r in rows if r["name"] == n) == 0]
    if empty:
        raise AcquireError(f"sources {empty} hold no samples; check their URLs and formats")
    manifest = pl.DataFrame(rows, schema=MANIFEST_SCHEMA)
    write_with(out_dir / "manifest.parquet", lambda tmp: manifest.write_parquet(tmp))
    return manifest


def _row(spec: SourceSpec, out_dir: Path, path: Path, sha: str, samples: int, bad: int, **fmt_and_images) -> dict:
    return {
        **{k: getattr(spec, k) for k in ("name", "url", "format", "role", "licence")},
        "sha256": sha,
        "bytes": path.stat().st_size,
        "samples": samples,
        "bad_samples": bad,
        "path": path.relative_to(out_dir).as_posix(),
        "fetched_at": datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds"),
        "images": 0,
        "images_missing": 0,
        **fmt_and_images,
    }


def _url_source_rows(
    spec: SourceSpec, path: Path, out_dir: Path, cfg: FetchConfig, quarantine: Quarantine, missing: Quarantine
) -> list[dict]:
    """Fetch the images of a URL source and describe the files they became, one row each (their format,
    not the source's, so that the pipeline's readers read them); AcquireError when too many images are missing."""
    done = materialise(spec.name, spec.format, path, cfg, quarantine, missing)
    rate = done.images_missing / done.images if done.images else 0.0
    if rate > cfg.max_missing_fraction:
        reasons = "; ".join(f"[{r.key}] {r.reason}" for r in missing.records if r.source == spec.name)
        raise AcquireError(
            f"source {spec.name!r}: {done.images_missing} of {done.images} images could not be fetched "
            f"({rate:.1%} > data.fetch.max_missing_fraction {cfg.max_missing_fraction:.1%}); see "
            f"{out_dir / 'quarantine.parquet'} (first: {reasons[:300]}), raise data.fetch.max_missing_fraction "
            "to accept it"
        )
    bad = quarantine.rejected(spec.name)
    counts = {"format": done.format, "images": done.images, "images_missing": done.images_missing}
    if not done.files:  # no document or pair kept its image: one row names the source file, with 0 samples
        return [_row(spec, out_dir, path, spec.sha256, 0, bad, **counts)]
    return [_row(spec, out_dir, p, sha256_file(p), n, bad, **counts) for p, n in done.files]


def _write_quarantine(out_dir: Path, quarantine: Quarantine, missing: Quarantine) -> None:
    """Bad samples and missing images in one table (missing images are not counted as bad samples)."""
    frame = pl.concat([quarantine.frame(), missing.frame()])
    write_with(out_dir / "quarantine.parquet", lambda tmp: frame.write_parquet(tmp))


# ---- download -------------------------------------------------------------------------------------


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
    """Extract the tar ``path`` to ``<its folder>/extracted`` with mm1.data.formats.safe_tar; return that folder."""
    dest = path.parent / "extracted"
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".extracting-"))
    try:
        safe_tar.extract(path, tmp, MAX_EXTRACTED_MEMBER_BYTES, "MAX_EXTRACTED_MEMBER_BYTES")
    except formats.FormatError as e:  # UnsafeArchiveError too
        shutil.rmtree(tmp)
        raise type(e)(f"source {spec.name!r}: {e}") from e
    except (tarfile.TarError, EOFError) as e:
        shutil.rmtree(tmp)
        raise formats.FormatError(f"source {spec.name!r}: {path}: truncated or corrupt tar archive ({e})") from e
    except OSError as e:  # writing the members: disk full, quota, read-only...
        shutil.rmtree(tmp)
        raise AcquireError(
            f"source {spec.name!r}: cannot extract {path} into {path.parent} ({e.strerror or e}; {free_space_note(path.parent)})"
        ) from e
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


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
