"""Pre-training sources from a data manifest: the world's or the acquisition stage's, read alike.

A manifest (parquet) has one row per file with at least ``name``, ``format``, ``role`` and
``path`` (relative to the manifest's folder). The three pre-training roles are read into records
with the format readers; rejected samples go to the quarantine, never silently away.

Every file is checked against the manifest's ``sha256`` before it is read: a byte that changed
after the world or acquire stage wrote the file (disk error, a hand edit, a partial copy) could
still decode, into different data, so a mismatch raises DataChecksumError instead.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from polars.exceptions import PanicException

from mm1.data.formats import read_caption_shards, read_documents, read_text
from mm1.data.quarantine import Quarantine
from mm1.data.records import CaptionSample, InterleavedDoc, TextDoc
from mm1.provenance import hash_path

ROLES = ("caption", "interleaved", "text")
MANIFEST_COLUMNS = {"name", "format", "role", "path", "sha256"}
READERS = {"webdataset": "caption", "obelics": "interleaved", "jsonl": "text"}


class DataChecksumError(ValueError):
    """A file does not have the sha256 its manifest (or SourceSpec) records."""


def read_manifest(path: Path) -> pl.DataFrame:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"data manifest {path} is a folder; give its manifest.parquet")
    if not path.is_file():
        raise FileNotFoundError(f"data manifest {path} does not exist; run the world or acquire stage first")
    try:
        df = pl.read_parquet(path)
    except (Exception, PanicException) as e:  # a damaged file can make polars panic (a BaseException)
        raise ValueError(f"data manifest {path} is not a readable parquet file ({type(e).__name__}: {e})") from e
    missing = MANIFEST_COLUMNS - set(df.columns)
    if missing:
        raise ValueError(f"data manifest {path} lacks the columns {sorted(missing)}")
    return df


def files_for(manifest: Path, role: str) -> list[tuple[str, Path]]:
    """(format, absolute path) of every file of ``role``, in manifest order, each checked against
    the manifest's sha256 (DataChecksumError naming the manifest, the file and both hashes)."""
    df = read_manifest(manifest).filter(pl.col("role") == role)
    root = Path(manifest).parent
    out = []
    for fmt, rel, expected in zip(df["format"], df["path"], df["sha256"], strict=True):
        path = root / rel
        verify(manifest, path, expected)
        out.append((fmt, path))
    return out


def verify(manifest: Path, path: Path, expected: str | None) -> None:
    """DataChecksumError unless ``path`` has the sha256 ``expected`` that ``manifest`` records for it."""
    if not path.is_file():
        raise FileNotFoundError(f"data manifest {manifest} lists {path}, which does not exist")
    if not expected:
        raise DataChecksumError(f"data manifest {manifest} records no sha256 for {path}; run its stage again")
    actual = sha256_file(path)
    if actual != expected:
        raise DataChecksumError(
            f"{path} has sha256 {actual}, but data manifest {manifest} records {expected}: the file changed "
            "after it was written (disk error or an edit); run the world or acquire stage again"
        )


def sha256_file(path: Path) -> str:
    """sha256 of one file's bytes (what the manifests record)."""
    return hash_path(path)


def load_pretraining_sources(
    manifest: Path, quarantine: Quarantine
) -> dict[str, list[CaptionSample] | list[InterleavedDoc] | list[TextDoc]]:
    """{"caption": [...], "interleaved": [...], "text": [...]} read from every file of each role."""
    out: dict[str, list] = {role: [] for role in ROLES}
    for role in ROLES:
        for fmt, path in files_for(manifest, role):
            if READERS.get(fmt) != role:
                raise ValueError(f"{manifest}: a {role} source must be {_expected(role)}, not {fmt} ({path})")
            if fmt == "webdataset":
                out[role].extend(read_caption_shards([path], quarantine))
            elif fmt == "obelics":
                out[role].extend(read_documents(path, quarantine))
            else:
                out[role].extend(read_text(path, quarantine))
    return out


def _expected(role: str) -> str:
    return next(fmt for fmt, r in READERS.items() if r == role)


def training_text(sources: dict[str, list]) -> list[str]:
    """Every piece of text of the pre-training sources (what the tokenizer is trained on)."""
    texts: list[str] = []
    for sample in sources["caption"]:
        texts.extend(sample.captions.values())
    for doc in sources["interleaved"]:
        texts.extend(t for t in doc.texts if t is not None)
    texts.extend(d.text for d in sources["text"])
    return texts
