"""Packed sequences on disk: one parquet file, one row per sequence, written atomically.

Columns: ``index`` (int64, the global sequence index), ``source`` (str), ``tokens`` (list[int32],
seq_length + 1), ``loss_mask`` (list[uint8], seq_length), ``images`` (list[binary], slot order).

The parquet footer's key-value metadata holds ``mm1.content_sha256``: a sha256 of every row's
content (:func:`content_sha256`), computed when the file is written and checked by
:func:`read_packed_indexed`, so a changed value (a flipped bit that parquet itself does not catch)
is an error naming the file, never a silently different training batch.
"""

from __future__ import annotations

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


def content_sha256(rows: Iterable[tuple[int, PackedSequence]]) -> str:
    """sha256 of (global index, sequence) pairs: every field of every row, each with its length, in order."""
    digest = hashlib.sha256(b"mm1 packed v1\0")
    for index, seq in rows:
        source = seq.source.encode()
        tokens, mask = np.ascontiguousarray(seq.tokens, "<i4"), np.ascontiguousarray(seq.loss_mask, np.uint8)
        digest.update(struct.pack("<5q", index, len(source), tokens.size, mask.size, len(seq.images)))
        digest.update(source)
        digest.update(tokens.tobytes())
        digest.update(mask.tobytes())
        for image in seq.images:
            digest.update(struct.pack("<q", len(image)))
            digest.update(image)
    return digest.hexdigest()


def write_packed(seqs: Sequence[PackedSequence], path: Path, indices: Sequence[int] | None = None) -> Path:
    """Write ``seqs`` to ``path`` (parquet); ``indices`` are their global indices (default 0, 1, ...)."""
    indices = range(len(seqs)) if indices is None else indices
    if len(indices) != len(seqs):
        raise ValueError(f"{len(indices)} indices for {len(seqs)} sequences")
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
    metadata = {CONTENT_KEY: content_sha256(zip(indices, seqs, strict=True))}
    return atomic.write_with(Path(path), lambda tmp: df.write_parquet(tmp, metadata=metadata))


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
    got = dict(df.schema)
    if got != SCHEMA:
        raise ValueError(f"packed sequence file {path} has columns {got}, expected {SCHEMA}")
    out = []
    for number, row in enumerate(df.iter_rows(named=True)):
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
