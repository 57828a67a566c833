"""Packed sequences on disk: one parquet file, one row per sequence, written atomically.

Columns: ``index`` (int64, the global sequence index), ``source`` (str), ``tokens`` (list[int32],
seq_length + 1), ``loss_mask`` (list[uint8], seq_length), ``images`` (list[binary], slot order).
"""

from __future__ import annotations

from collections.abc import Sequence
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
    return atomic.write_with(Path(path), lambda tmp: df.write_parquet(tmp))


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
    except (Exception, pl.exceptions.PanicException) as e:  # several types; a panic is no Exception
        raise ValueError(f"packed sequence file {path} is not a readable parquet file: {e}") from e
    got = dict(df.schema)
    if got != SCHEMA:
        raise ValueError(f"packed sequence file {path} has columns {got}, expected {SCHEMA}")
    out = []
    for row in df.iter_rows(named=True):
        try:
            seq = PackedSequence(
                tokens=np.asarray(row["tokens"], dtype=np.int32),
                loss_mask=np.asarray(row["loss_mask"], dtype=np.uint8),
                images=list(row["images"]),
                source=row["source"],
            )
        except (ValueError, TypeError) as e:
            raise ValueError(f"packed sequence file {path}, row index {row['index']}: {e}") from e
        out.append((row["index"], seq))
    return out
