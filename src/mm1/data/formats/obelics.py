"""Interleaved image-text documents as OBELICS-style parquet.

One row per document: ``id`` (str), ``texts`` (list[str | null]), ``images`` (list[binary | null],
the raw encoded image bytes), ``meta`` (a JSON object as a string). Position i of a document holds
exactly one of ``texts[i]`` / ``images[i]``. A file without these columns raises FormatError; a
document whose lists mismatch, whose image does not decode or whose meta is not a JSON object goes
to the quarantine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import polars as pl
from polars.exceptions import PanicException

from mm1.atomic import write_with
from mm1.data.formats._common import FormatError, Sink, image_problem
from mm1.data.quarantine import Quarantine
from mm1.data.records import InterleavedDoc

SCHEMA = {"id": pl.Utf8, "texts": pl.List(pl.Utf8), "images": pl.List(pl.Binary), "meta": pl.Utf8}


def write_documents(docs: Iterable[InterleavedDoc], path: Path) -> Path:
    """Write ``docs`` to one parquet file (atomically)."""
    rows = [(d.id, list(d.texts), list(d.images), json.dumps(d.meta, sort_keys=True, ensure_ascii=False)) for d in docs]
    df = pl.DataFrame(rows, schema=SCHEMA, orient="row")
    return write_with(Path(path), lambda tmp: df.write_parquet(tmp))


def read_documents(
    path: Path, quarantine: Quarantine | None = None, source: str | None = None
) -> Iterator[InterleavedDoc]:
    """The documents of one parquet file in row order. Bad documents are recorded in ``quarantine``
    under ``source`` (default: the file name); without a quarantine the first one raises FormatError."""
    path = Path(path)
    sink = Sink(quarantine, source, path)
    try:
        df = pl.read_parquet(path)
    except (Exception, PanicException) as e:  # ComputeError, OSError...; a damaged footer can make polars panic
        raise FormatError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e
    missing = [c for c in SCHEMA if c not in df.columns]
    if missing:
        raise FormatError(f"{path}: not an OBELICS-style table, missing columns {missing} (has {df.columns})")
    try:
        df = df.select(pl.col(c).cast(t) for c, t in SCHEMA.items())
    except Exception as e:
        raise FormatError(f"{path}: columns do not have the types {SCHEMA} ({e})") from e
    for i, row in enumerate(df.iter_rows(named=True)):
        doc = _document(i, row, sink)
        if doc is not None:
            sink.accept()
            yield doc


def _document(i: int, row: dict, sink: Sink) -> InterleavedDoc | None:
    key = row["id"] if row["id"] is not None else f"row {i}"
    if row["id"] is None:
        return sink.reject(key, "id is null")
    texts, images = row["texts"], row["images"]
    if texts is None or images is None:
        return sink.reject(key, "texts or images is null")
    if len(texts) != len(images):
        return sink.reject(key, f"{len(texts)} texts vs {len(images)} images")
    for pos, image in enumerate(images):
        if image is not None and (problem := image_problem(image)):
            return sink.reject(key, f"image at position {pos}: {problem}")
    try:
        meta = json.loads(row["meta"]) if row["meta"] is not None else {}
    except json.JSONDecodeError as e:
        return sink.reject(key, f"meta is not JSON ({e})")
    if not isinstance(meta, dict):
        return sink.reject(key, "meta is not a JSON object")
    try:
        return InterleavedDoc(id=key, texts=tuple(texts), images=tuple(images), meta=meta)
    except ValueError as e:  # a position with both or neither of text and image
        return sink.reject(key, str(e))
