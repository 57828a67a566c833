"""What the image-fetch step writes: a URL source as files the pipeline reads (:func:`materialise`).

A source of format obelics_urls becomes ``<its folder>/fetched/documents.parquet`` (the mm1 OBELICS
layout of :mod:`mm1.data.formats.obelics`, one row group per block of ``data.fetch.block_size``
documents); a url_captions source becomes webdataset shards ``fetched/captions-000000.tar``... of
``data.fetch.shard_size`` pairs. Blocks are fetched by :class:`mm1.data.fetch_images.Fetcher` (the
next block downloads while one is written), so one block's images are in memory at a time. An
image that could not be fetched is dropped from its document (a document or pair left with none is
dropped too) and recorded in the ``missing`` quarantine. The ``fetched/`` folder is put in place whole
at the end (mm1.atomic.write_dir_with): a killed run leaves the previous one, never a half file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from mm1.atomic import write_dir_with
from mm1.config.data import FetchConfig
from mm1.data.fetch_images import Fetched, Fetcher
from mm1.data.formats import obelics
from mm1.data.formats.url_sources import UrlCaption, UrlDoc, read_url_captions, read_url_documents
from mm1.data.formats.webdataset import write_caption_shards
from mm1.data.quarantine import Quarantine
from mm1.data.records import CaptionSample, InterleavedDoc

ARROW_SCHEMA = pl.DataFrame(schema=obelics.SCHEMA).to_arrow().schema
"""formats.obelics.SCHEMA as the arrow types polars writes, so that read_documents reads the file."""


@dataclass(frozen=True)
class Materialised:
    """The files a URL source became, in a format the pipeline reads, and its image counts."""

    format: str  # obelics or webdataset
    files: tuple[tuple[Path, int], ...]  # (path, samples) in order; none when no sample kept its image
    images: int  # distinct image URLs tried
    images_missing: int


def materialise(
    name: str, fmt: str, path: Path, cfg: FetchConfig, quarantine: Quarantine, missing: Quarantine
) -> Materialised:
    """Fetch the images of the URL source ``path`` (obelics_urls or url_captions) and write what came to
    ``<its folder>/fetched/``: ``documents.parquet``, a row group per block of ``cfg.block_size``, or
    ``captions-000000.tar``... of ``cfg.shard_size`` pairs, one block's images in memory at a time. The
    folder is put in place whole at the end: a killed run leaves the previous one, never a half file.
    Malformed rows go to ``quarantine``; missing images, and documents or pairs left without them, to
    ``missing`` (not counted as bad samples)."""
    folder = Path(path).parent
    write = _write_documents if fmt == "obelics_urls" else _write_captions
    files: list[tuple[str, int]] = []
    with Fetcher(folder / "images", cfg, f"{name} images") as fetcher:
        src = _Source(name, Path(path), cfg, fetcher, missing)
        write_dir_with(folder / "fetched", lambda tmp: files.extend(write(tmp, src, quarantine)))
    done = tuple((folder / "fetched" / f, n) for f, n in files)
    return Materialised("obelics" if write is _write_documents else "webdataset", done, fetcher.tried, fetcher.missing)


@dataclass(frozen=True)
class _Source:
    """What a writer needs of one source: its name and file, the sizes, the fetcher, where missing images go."""

    name: str
    path: Path
    cfg: FetchConfig
    fetcher: Fetcher
    missing: Quarantine


def _fetched_blocks(items: Iterator, src: _Source, urls_of) -> Iterator[tuple[list, dict[str, Fetched]]]:
    """(block, {url: outcome}) per ``block_size`` items, the next block fetching while one is written."""
    ahead = None
    while block := list(islice(items, src.cfg.block_size)):
        started = src.fetcher.submit([u for item in block for u in urls_of(item) if u])
        if ahead is not None:
            yield ahead[0], src.fetcher.collect(ahead[1])
        ahead = (block, started)
    if ahead is not None:
        yield ahead[0], src.fetcher.collect(ahead[1])


def _write_documents(tmp: Path, src: _Source, quarantine: Quarantine) -> list[tuple[str, int]]:
    """Fetch and append the documents block by block, each block one row group of ``tmp/documents.parquet``."""
    docs, writer, count = read_url_documents(src.path, quarantine, src.name), None, 0
    try:
        for block, outcomes in _fetched_blocks(docs, src, lambda d: d.urls):
            if not (kept := [d for d in (_document(d, outcomes, src) for d in block) if d is not None]):
                continue
            writer = writer or pq.ParquetWriter(tmp / "documents.parquet", ARROW_SCHEMA, compression="zstd")
            columns = {
                "id": [d.id for d in kept],
                "texts": [list(d.texts) for d in kept],
                "images": [list(d.images) for d in kept],
                "meta": [json.dumps(d.meta, sort_keys=True, ensure_ascii=False) for d in kept],
            }
            writer.write_table(pa.Table.from_pydict(columns, schema=ARROW_SCHEMA))
            count += len(kept)
    finally:  # a failed run's half file dies with the temporary folder
        if writer is not None:
            writer.close()
    return [("documents.parquet", count)] if count else []


def _write_captions(tmp: Path, src: _Source, quarantine: Quarantine) -> list[tuple[str, int]]:
    """Fetch the pairs block by block into webdataset shards of ``shard_size`` pairs, streamed to disk."""
    pairs = read_url_captions(src.path, quarantine, src.name)
    kept = [0]

    def samples() -> Iterator[CaptionSample]:
        for block, outcomes in _fetched_blocks(pairs, src, lambda p: (p.url,)):
            for pair in block:
                if (sample := _pair(pair, outcomes, src)) is not None:
                    kept[0] += 1
                    yield sample  # its image is read from the cache here, one at a time

    shards, size = write_caption_shards(samples(), tmp, src.cfg.shard_size), src.cfg.shard_size
    return [(p.name, min(size, kept[0] - i * size)) for i, p in enumerate(shards)]


def _document(doc: UrlDoc, outcomes: dict[str, Fetched], src: _Source) -> InterleavedDoc | None:
    texts, images = [], []
    for pos, (text, url) in enumerate(zip(doc.texts, doc.urls, strict=True)):
        if url is None:
            texts.append(text)
            images.append(None)
        elif (got := outcomes[url]).path is None:
            src.missing.add(src.name, src.path, f"{doc.id}#{pos} {url}", f"image not fetched: {got.reason}")
        else:
            texts.append(None)
            images.append(got.path.read_bytes())
    if all(im is None for im in images):
        reason = "document left with no image after fetching (its images are missing)"
        src.missing.add(src.name, src.path, doc.id, reason)
        return None
    return InterleavedDoc(id=doc.id, texts=tuple(texts), images=tuple(images), meta=doc.meta)


def _pair(pair: UrlCaption, outcomes: dict[str, Fetched], src: _Source) -> CaptionSample | None:
    got = outcomes[pair.url]
    if got.path is None:
        src.missing.add(src.name, src.path, pair.url, f"image not fetched: {got.reason}")
        return None
    meta = {**pair.meta, "url": pair.url}
    return CaptionSample(key=pair.key, image=got.path.read_bytes(), captions={"alt": pair.caption}, meta=meta)
