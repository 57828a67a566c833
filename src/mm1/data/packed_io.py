"""Packed sequences on disk: one parquet file, one row per sequence, written atomically.

Columns: ``index`` (int64, the global sequence index), ``source`` (str), ``tokens`` (list[int32],
seq_length + 1), ``loss_mask`` (list[uint8], seq_length), ``images`` (list[binary], slot order).

The parquet footer's key-value metadata holds ``mm1.content_sha256``: a sha256 of every row's
content (:func:`content_sha256`), computed when the file is written and checked by
:func:`read_packed_indexed`, so a changed value (a flipped bit that parquet itself does not catch)
is an error naming the file, never a silently different training batch.

Rows are written in blocks of ``mm1.block_rows`` rows (one parquet row group each), and the footer
holds each block's content sha256 too (``mm1.block_sha256``, space-separated): the streaming reader
(:mod:`mm1.data.stream`) reads and checks one block at a time, never the whole file.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from mm1 import atomic
from mm1.data.packing import PackedSequence

SCHEMA = {
    "index": pl.Int64,
    "source": pl.String,
    "tokens": pl.List(pl.Int32),
    "loss_mask": pl.List(pl.UInt8),
    "images": pl.List(pl.Binary),
}
CONTENT_KEY = "mm1.content_sha256"  # parquet key-value metadata: content_sha256 of the rows
BLOCK_ROWS_KEY = "mm1.block_rows"  # rows per block (= parquet row group)
BLOCKS_KEY = "mm1.block_sha256"  # content_sha256 of each block's rows, space-separated, in order
BLOCK_ROWS = 16  # default rows per block; the pack stage writes one micro-batch per block


def content_sha256(rows: Iterable[tuple[int, PackedSequence]]) -> str:
    """sha256 of (global index, sequence) pairs: every field of every row, each with its length, in order."""
    digest = new_digest()
    for index, seq in rows:
        update_digest(digest, index, seq)
    return digest.hexdigest()


def new_digest():
    """The hash object :func:`content_sha256` starts from (for hashing rows as they stream by)."""
    return hashlib.sha256(b"mm1 packed v1\0")


def update_digest(digest, index: int, seq: PackedSequence) -> None:
    """Add one (global index, sequence) row to ``digest`` as :func:`content_sha256` does."""
    source = seq.source.encode()
    tokens, mask = np.ascontiguousarray(seq.tokens, "<i4"), np.ascontiguousarray(seq.loss_mask, np.uint8)
    digest.update(struct.pack("<5q", index, len(source), tokens.size, mask.size, len(seq.images)))
    digest.update(source)
    digest.update(tokens.tobytes())
    digest.update(mask.tobytes())
    for image in seq.images:
        digest.update(struct.pack("<q", len(image)))
        digest.update(image)


def write_packed(
    seqs: Sequence[PackedSequence], path: Path, indices: Sequence[int] | None = None, block_rows: int = BLOCK_ROWS
) -> Path:
    """Write ``seqs`` to ``path`` (parquet); ``indices`` are their global indices (default 0, 1, ...);
    ``block_rows`` rows per block (row group), each block's hash in the footer."""
    indices = range(len(seqs)) if indices is None else indices
    if len(indices) != len(seqs):
        raise ValueError(f"{len(indices)} indices for {len(seqs)} sequences")
    if block_rows < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    lengths = {len(s.tokens) for s in seqs}
    if len(lengths) > 1:
        raise ValueError(f"one packed file holds one sequence length, got token lengths {sorted(lengths)}")
    width = lengths.pop() if lengths else 1
    df = pl.DataFrame(
        {
            "index": pl.Series(list(indices), dtype=pl.Int64),
            "source": pl.Series([s.source for s in seqs], dtype=pl.String),
            "tokens": _lists(np.stack([s.tokens for s in seqs]) if seqs else np.empty((0, width), np.int32)),
            "loss_mask": _lists(np.stack([s.loss_mask for s in seqs]) if seqs else np.empty((0, width - 1), np.uint8)),
            "images": pl.Series([s.images for s in seqs], dtype=pl.List(pl.Binary)),
        }
    )
    rows = list(zip(indices, seqs, strict=True))
    blocks = [content_sha256(rows[i : i + block_rows]) for i in range(0, len(rows), block_rows)]
    metadata = {CONTENT_KEY: content_sha256(rows), BLOCK_ROWS_KEY: str(block_rows), BLOCKS_KEY: " ".join(blocks)}
    write = functools.partial(df.write_parquet, metadata=metadata, row_group_size=block_rows)
    return atomic.write_with(Path(path), write)


def _lists(rows: np.ndarray) -> pl.Series:
    """(n, width) array -> polars List column of its dtype (via a fixed-width Array, no Python loop)."""
    inner = {np.dtype(np.int32): pl.Int32, np.dtype(np.uint8): pl.UInt8}[rows.dtype]
    return pl.Series(rows, dtype=pl.Array(inner, rows.shape[1])).cast(pl.List(inner))


def read_packed(path: Path) -> list[PackedSequence]:
    """The sequences of a file written by :func:`write_packed`, in file order."""
    return [seq for _, seq in read_packed_indexed(path)]


def read_packed_indexed(path: Path) -> list[tuple[int, PackedSequence]]:
    """(global index, sequence) pairs of a file written by :func:`write_packed`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"packed sequence file {path} does not exist; run the packing stage first")
    try:
        df = pl.read_parquet(path)
        recorded = pl.read_parquet_metadata(path).get(CONTENT_KEY)
    except (Exception, pl.exceptions.PanicException) as e:  # several types; a panic is no Exception
        raise ValueError(f"packed sequence file {path} is not a readable parquet file: {e}") from e
    out = sequences(df, path)
    if recorded is None:
        raise ValueError(
            f"packed sequence file {path} carries no content hash ({CONTENT_KEY}): it was written before mm1 "
            "recorded one, or not by mm1; rerun the pack stage"
        )
    if (found := content_sha256(out)) != recorded:
        raise ValueError(
            f"packed sequence file {path}: its contents changed after it was written (sha256 {found[:16]}..., "
            f"recorded {str(recorded)[:16]}...): it is corrupt or was edited; rerun the pack stage"
        )
    return out


def sequences(df: pl.DataFrame, path: Path, first: int = 0) -> list[tuple[int, PackedSequence]]:
    """(global index, sequence) pairs of rows of a packed file (``first``: the file row of the first)."""
    got = dict(df.schema)
    if got != SCHEMA:
        raise ValueError(f"packed sequence file {path} has columns {got}, expected {SCHEMA}")
    out = []
    for number, row in enumerate(df.iter_rows(named=True), first):
        if not isinstance(row["index"], int):
            raise ValueError(f"packed sequence file {path}, row {number}: no sequence index")
        try:
            images = list(row["images"])
            if not all(isinstance(image, bytes) for image in images):
                raise ValueError("an image slot holds no image")
            seq = PackedSequence(
                tokens=np.asarray(row["tokens"], dtype=np.int32),
                loss_mask=np.asarray(row["loss_mask"], dtype=np.uint8),
                images=images,
                source=row["source"],
            )
        except (ValueError, TypeError) as e:
            raise ValueError(f"packed sequence file {path}, row index {row['index']}: {e}") from e
        out.append((row["index"], seq))
    return out
