"""Sources whose images are URLs: the released OBELICS parquet and URL + caption tables.

    obelics_urls  HuggingFaceM4/OBELICS as released: parquet, one row per document, columns
                  ``images`` (list[str | null], image URLs), ``texts`` (list[str | null]), ``metadata``
                  (a JSON list, one object per position: src, alt_text, formatted_filename...) and
                  ``general_metadata`` (a JSON object: url, warc_filename, warc_record_offset, ...).
                  There is no id column: a document's id is the first 20 hex digits of
                  sha256(``general_metadata.url`` + "#" + its row index in the file), the same on
                  every read of the same file.
    url_captions  image URL + caption rows, as img2dataset reads them: a parquet or jsonl whose URL
                  column is one of URL_COLUMNS and caption column one of CAPTION_COLUMNS (LAION:
                  ``URL`` / ``TEXT``), or a tsv without a header (CC3M: caption<TAB>url; CC12M:
                  url<TAB>caption; the field that is a URL is taken as the URL). The file's kind is
                  read from its first bytes, not its name.

The readers only parse; mm1.data.fetch_images fetches the images, a block of rows at a time. A parquet
or jsonl table is read whole (text and URLs only: a few GB for a LAION part of millions of rows), a tsv
line by line; either way rows are yielded one by one. A row that is not a document or a
pair (lists of different lengths, a position with both or neither of text and URL, no URL, no
caption, metadata that is not JSON) goes to the quarantine like any reader's bad sample.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from polars.exceptions import PanicException

from mm1.data.formats._common import FormatError, Sink
from mm1.data.quarantine import Quarantine

URL_COLUMNS = ("URL", "url", "image_url", "img_url")
CAPTION_COLUMNS = ("TEXT", "caption", "text", "alt_text", "alt")
OBELICS_COLUMNS = ("images", "texts", "metadata", "general_metadata")


@dataclass(frozen=True)
class UrlDoc:
    """An interleaved document whose images are still URLs: exactly one of texts[i] / urls[i] per position."""

    id: str
    texts: tuple[str | None, ...]
    urls: tuple[str | None, ...]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UrlCaption:
    """An image URL and its alt-text caption."""

    key: str
    url: str
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)


def _read_parquet(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except (Exception, PanicException) as e:  # a damaged footer can make polars panic
        raise FormatError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e


def read_url_documents(path: Path, quarantine: Quarantine | None = None, source: str | None = None) -> Iterator[UrlDoc]:
    """The documents of one released-OBELICS parquet file, in row order (bad rows to ``quarantine``)."""
    path = Path(path)
    sink = Sink(quarantine, source, path)
    df = _read_parquet(path)
    missing = [c for c in OBELICS_COLUMNS if c not in df.columns]
    if missing:
        raise FormatError(
            f"{path}: not a released-OBELICS table, missing columns {missing} (has {df.columns}); "
            "a table with id / texts / images (bytes) / meta is format obelics"
        )
    types = {"images": pl.List(pl.Utf8), "texts": pl.List(pl.Utf8), "metadata": pl.Utf8, "general_metadata": pl.Utf8}
    try:
        df = df.select(pl.col(c).cast(t) for c, t in types.items())
    except Exception as e:
        raise FormatError(f"{path}: columns do not have the types {types} ({e})") from e
    for i, row in enumerate(df.iter_rows(named=True)):
        doc = _url_document(i, row, sink)
        if doc is not None:
            sink.accept()
            yield doc


def _json(text: str | None, kind: type, what: str) -> tuple[Any, str | None]:
    if text is None:
        return kind(), None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"{what} is not JSON ({e})"
    if not isinstance(value, kind):
        return None, f"{what} is not a JSON {kind.__name__}"
    return value, None


def _url_document(i: int, row: dict, sink: Sink) -> UrlDoc | None:
    general, problem = _json(row["general_metadata"], dict, "general_metadata")
    if problem:
        return sink.reject(f"row {i}", problem)
    page = general.get("url") if isinstance(general.get("url"), str) else ""
    doc_id = hashlib.sha256(f"{page}#{i}".encode()).hexdigest()[:20]
    key = f"{doc_id} (row {i})"
    texts, urls = row["texts"], row["images"]
    if texts is None or urls is None:
        return sink.reject(key, "texts or images is null")
    if len(texts) != len(urls):
        return sink.reject(key, f"{len(texts)} texts vs {len(urls)} images")
    for pos, (t, u) in enumerate(zip(texts, urls, strict=True)):
        if (t is None) == (u is None):
            return sink.reject(key, f"position {pos} must hold exactly one of text or image URL")
    if all(u is None for u in urls):
        return sink.reject(key, "document has no image")
    if not any(t and t.strip() for t in texts):
        return sink.reject(key, "document has no text")
    positions, problem = _json(row["metadata"], list, "metadata")
    if problem:
        return sink.reject(key, problem)
    alt = [p.get("alt_text") if isinstance(p, dict) else None for p in positions]
    meta = {"general_metadata": general, "row": i, "alt_texts": alt if any(alt) else []}
    return UrlDoc(id=doc_id, texts=tuple(texts), urls=tuple(urls), meta=meta)


def read_url_captions(
    path: Path, quarantine: Quarantine | None = None, source: str | None = None
) -> Iterator[UrlCaption]:
    """The (URL, caption) rows of a parquet, jsonl or tsv file, in order (bad rows to ``quarantine``)."""
    path = Path(path)
    sink = Sink(quarantine, source, path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PAR1"):
        rows = _table_rows(path, _read_parquet(path))
    elif head.lstrip()[:1] == b"{":
        rows = _table_rows(path, _read_jsonl(path))
    else:
        rows = _tsv_rows(path)
    for i, (url, caption, meta) in enumerate(rows):
        if not url:
            sink.reject(f"row {i}", "no image URL")
        elif caption is None or not caption.strip():
            sink.reject(f"row {i}", f"no caption for {url}")
        else:
            sink.accept()
            yield UrlCaption(key=f"{i:09d}", url=url, caption=caption, meta=meta)


def _read_jsonl(path: Path) -> pl.DataFrame:
    try:
        return pl.read_ndjson(path, infer_schema_length=None)
    except (Exception, PanicException) as e:
        raise FormatError(f"{path}: not a readable jsonl file ({type(e).__name__}: {e})") from e


def _column(path: Path, df: pl.DataFrame, names: tuple[str, ...], what: str) -> str:
    found = next((c for c in names if c in df.columns), None)
    if found is None:
        raise FormatError(f"{path}: no {what} column (one of {list(names)}; has {df.columns})")
    return found


def _table_rows(path: Path, df: pl.DataFrame) -> Iterator[tuple[str | None, str | None, dict]]:
    url_col = _column(path, df, URL_COLUMNS, "image URL")
    cap_col = _column(path, df, CAPTION_COLUMNS, "caption")
    kept = [c for c in df.columns if c not in (url_col, cap_col) and df.schema[c].is_numeric()]  # WIDTH, similarity...
    df = df.select(pl.col(url_col).cast(pl.Utf8), pl.col(cap_col).cast(pl.Utf8), *kept)
    for row in df.iter_rows():
        yield row[0], row[1], {c: v for c, v in zip(kept, row[2:], strict=True) if v is not None}


def _tsv_rows(path: Path) -> Iterator[tuple[str | None, str | None, dict]]:
    try:
        with open(path, encoding="utf-8") as lines:  # streamed: CC12M's tsv is over 2 GB
            for line in lines:
                yield _tsv_row(line.rstrip("\r\n"))
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: neither parquet, jsonl nor a UTF-8 tsv ({e})") from e


def _tsv_row(line: str) -> tuple[str | None, str | None, dict]:
    fields = line.split("\t")
    urls = [f for f in fields if "://" in f and " " not in f.strip()]
    if len(fields) != 2 or len(urls) != 1:
        return None, None, {}
    return urls[0].strip(), next(f for f in fields if f is not urls[0]), {}
