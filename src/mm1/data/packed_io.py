"""Packed sequences on disk: one parquet file, one row per sequence, written atomically.

Columns: ``index`` (int64, the global sequence index), ``source`` (str), ``tokens`` (list[int32],
seq_length + 1), ``loss_mask`` (list[uint8], seq_length), ``images`` (list[binary], slot order).

The parquet footer's key-value metadata holds ``mm1.content_sha256``: a sha256 of every row's
content (:func:`content_sha256`), computed when the file is written and checked by
:func:`read_packed_indexed`, so a changed value (a flipped bit that parquet itself does not catch)
is an error naming the file, never a silently different training batch.

Rows are written in blocks of ``mm1.block_rows`` rows (one parquet row group each), and the footer
holds each block's content sha256 too (``mm1.block_sha256``, space-separated): the streaming reader
(:mod:`mm1.data.stream`) reads and checks one block at a time, never the whole file. The writer
(:class:`PackedWriter`, pyarrow's ``ParquetWriter``: polars cannot append row groups) likewise holds
one block: each is written and hashed as its last row arrives, the footer at the end. What still
grows with the file is the footer itself: pyarrow keeps each row group's metadata until close
(~10 KiB a block in memory, ~0.7 KiB on disk) and the block hashes take 65 bytes each.

So the pack stage writes a **sharded set**: a folder (still named ``train.parquet``; polars and
pyarrow read a folder of parquet files as one table) of shards ``part-<i>-of-<n>.parquet``, each a
packed file as above of at most :data:`SHARD_BLOCKS` blocks (:func:`write_shards`). Footers, writer
memory and a reader's footer parse are then bounded by one shard whatever the set's size (at MM1's
102 M one-row blocks, one file's footer would hold ~1 TB in the writer). Every reader here takes a
file or a sharded folder; shard i holds global rows ``i * rows_per_shard ...`` in order.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

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
SHARD_BLOCKS = 4096  # blocks per shard of a sharded set: ~40 MiB of writer footer memory at most
_SHARD = re.compile(r"part-(\d+)-of-(\d+)\.parquet")
ARROW_SCHEMA = pl.DataFrame(schema=SCHEMA).to_arrow(compat_level=pl.CompatLevel.oldest()).schema  # as polars writes


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


class PackedWriter:
    """Rows written to a parquet file as they come, one block (row group) of ``block_rows`` rows at a
    time: at most one block is held. Closing writes the footer (:data:`CONTENT_KEY`,
    :data:`BLOCK_ROWS_KEY`, :data:`BLOCKS_KEY`) and fsyncs the file. It writes ``where`` itself, in
    place; :func:`write_rows` publishes a file atomically through it."""

    def __init__(self, where: Path, block_rows: int = BLOCK_ROWS):
        if block_rows < 1:
            raise ValueError(f"block_rows must be at least 1, got {block_rows}")
        self.block_rows, self.rows = block_rows, 0
        self._file = open(where, "wb")  # closed by close() or __exit__
        try:
            self._parquet = pq.ParquetWriter(self._file, ARROW_SCHEMA, compression="zstd")
        except BaseException:
            self._file.close()
            raise
        self._block: list[tuple[int, PackedSequence]] = []
        self._digest, self._blocks = new_digest(), []
        self._width: int | None = None

    def __enter__(self) -> PackedWriter:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()
        else:  # a half-written file, not synced: the caller discards it (and sees its own error)
            with contextlib.suppress(Exception):
                self._parquet.close()
            self._file.close()

    def add(self, index: int, seq: PackedSequence) -> None:
        """Append the row (global ``index``, ``seq``); a full block goes to disk."""
        if self._width is None:
            self._width = len(seq.tokens)
        elif len(seq.tokens) != self._width:
            raise ValueError(
                f"one packed file holds one sequence length, got token lengths {sorted({self._width, len(seq.tokens)})}"
            )
        update_digest(self._digest, index, seq)
        self._block.append((index, seq))
        self.rows += 1
        if len(self._block) == self.block_rows:
            self._flush()

    def _flush(self) -> None:
        if self._block:
            self._parquet.write_table(_table(self._block), row_group_size=self.block_rows)
            self._blocks.append(content_sha256(self._block))
            self._block = []

    def close(self) -> None:
        """Write the last (partial) block and the footer, fsync and close the file."""
        self._flush()
        blocks = " ".join(self._blocks)
        meta = {CONTENT_KEY: self._digest.hexdigest(), BLOCK_ROWS_KEY: str(self.block_rows), BLOCKS_KEY: blocks}
        self._parquet.add_key_value_metadata(meta)
        self._parquet.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def write_rows(rows: Iterable[tuple[int, PackedSequence]], path: Path, block_rows: int = BLOCK_ROWS) -> Path:
    """Write (global index, sequence) ``rows`` to ``path`` as they are drawn from the iterable, in
    memory bounded by one block; the file appears under ``path`` only once complete (atomic)."""

    def write(tmp: Path) -> None:
        with PackedWriter(tmp, block_rows) as writer:
            for index, seq in rows:
                writer.add(index, seq)

    return atomic.write_with(Path(path), write)


def shard_name(i: int, n: int) -> str:
    """File name of shard ``i`` (0-based) of ``n``."""
    return f"part-{i:05d}-of-{n:05d}.parquet"


def write_shards(
    rows: Iterable[tuple[int, PackedSequence]],
    path: Path,
    block_rows: int = BLOCK_ROWS,
    shard_blocks: int = SHARD_BLOCKS,
) -> Path:
    """Write (global index, sequence) ``rows`` as a sharded set: the folder ``path`` of shards of
    ``shard_blocks`` blocks of ``block_rows`` rows (the last may be shorter; an empty set is one empty
    shard). One block in memory, as :func:`write_rows`; the folder appears only once complete."""
    if shard_blocks < 1:
        raise ValueError(f"shard_blocks must be at least 1, got {shard_blocks}")
    per_shard = block_rows * shard_blocks
    rows = iter(rows)

    def write(tmp: Path) -> None:
        written: list[Path] = []
        while (first := next(rows, None)) is not None or not written:
            written.append(tmp / f"{len(written)}.part")
            with PackedWriter(written[-1], block_rows) as writer:
                for index, seq in itertools.chain([first] if first else [], itertools.islice(rows, per_shard - 1)):
                    writer.add(index, seq)
            if first is None:
                break
        for i, part in enumerate(written):
            part.rename(tmp / shard_name(i, len(written)))

    return atomic.write_dir_with(Path(path), write)


def shard_paths(path: Path) -> list[Path]:
    """The shards of sharded set ``path`` in order; an error names what is missing or foreign. Hidden
    files are not looked at (Snakemake leaves ``.snakemake_timestamp`` in a folder output)."""
    names = sorted(p.name for p in Path(path).iterdir() if not p.name.startswith("."))
    found = [_SHARD.fullmatch(n) for n in names]
    counts = {int(m[2]) for m in found if m}
    if not names or None in found or len(counts) != 1 or [int(m[1]) for m in found] != list(range(counts.pop())):
        foreign = [n for n, m in zip(names, found, strict=True) if not m]
        raise ValueError(
            f"packed sequence set {path} is not a complete set of shards part-<i>-of-<n>.parquet "
            f"({len(names)} files{', unexpected: ' + ', '.join(foreign[:3]) if foreign else ''}): it is incomplete "
            "or was edited; rerun the pack stage"
        )
    return [Path(path) / n for n in names]


def write_packed(
    seqs: Sequence[PackedSequence], path: Path, indices: Sequence[int] | None = None, block_rows: int = BLOCK_ROWS
) -> Path:
    """Write ``seqs`` to ``path`` (parquet); ``indices`` are their global indices (default 0, 1, ...);
    ``block_rows`` rows per block (row group), each block's hash in the footer."""
    indices = range(len(seqs)) if indices is None else indices
    if len(indices) != len(seqs):
        raise ValueError(f"{len(indices)} indices for {len(seqs)} sequences")
    return write_rows(zip(indices, seqs, strict=True), path, block_rows)


def _table(rows: Sequence[tuple[int, PackedSequence]]) -> pa.Table:
    """One block of rows as an arrow table of :data:`ARROW_SCHEMA`."""
    seqs = [seq for _, seq in rows]
    df = pl.DataFrame(
        {
            "index": pl.Series([index for index, _ in rows], dtype=pl.Int64),
            "source": pl.Series([s.source for s in seqs], dtype=pl.String),
            "tokens": _lists(np.stack([s.tokens for s in seqs])),
            "loss_mask": _lists(np.stack([s.loss_mask for s in seqs])),
            "images": pl.Series([s.images for s in seqs], dtype=pl.List(pl.Binary)),
        }
    )
    return df.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(ARROW_SCHEMA)


def _lists(rows: np.ndarray) -> pl.Series:
    """(n, width) array -> polars List column of its dtype (via a fixed-width Array, no Python loop)."""
    inner = {np.dtype(np.int32): pl.Int32, np.dtype(np.uint8): pl.UInt8}[rows.dtype]
    return pl.Series(rows, dtype=pl.Array(inner, rows.shape[1])).cast(pl.List(inner))


def read_packed(path: Path) -> list[PackedSequence]:
    """The sequences of a file written by :func:`write_packed`, in file order."""
    return [seq for _, seq in read_packed_indexed(path)]


def read_packed_indexed(path: Path) -> list[tuple[int, PackedSequence]]:
    """(global index, sequence) pairs of a file written by :func:`write_packed`, or of every shard of
    a sharded set (:func:`write_shards`) in order, each checked against its content hash."""
    path = Path(path)
    if path.is_dir():
        return [row for shard in shard_paths(path) for row in read_packed_indexed(shard)]
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
