"""Pre-training sources from a data manifest: the world's or the acquisition stage's, read alike.

A manifest (parquet) has one row per file with at least ``name``, ``format``, ``role`` and
``path`` (relative to the manifest's folder). The three pre-training roles are read into records
with the format readers; rejected samples go to the quarantine, never silently away.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mm1.data.formats import read_caption_shards, read_documents, read_text
from mm1.data.quarantine import Quarantine
from mm1.data.records import CaptionSample, InterleavedDoc, TextDoc

ROLES = ("caption", "interleaved", "text")
MANIFEST_COLUMNS = {"name", "format", "role", "path"}
READERS = {"webdataset": "caption", "obelics": "interleaved", "jsonl": "text"}


def read_manifest(path: Path) -> pl.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data manifest {path} does not exist; run the world or acquire stage first")
    df = pl.read_parquet(path)
    missing = MANIFEST_COLUMNS - set(df.columns)
    if missing:
        raise ValueError(f"data manifest {path} lacks the columns {sorted(missing)}")
    return df


def files_for(manifest: Path, role: str) -> list[tuple[str, Path]]:
    """(format, absolute path) of every file of ``role``, in manifest order."""
    df = read_manifest(manifest).filter(pl.col("role") == role)
    root = Path(manifest).parent
    return [(fmt, root / rel) for fmt, rel in zip(df["format"], df["path"], strict=True)]


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
