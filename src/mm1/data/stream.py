"""Packed sequences as a stream: each data-parallel rank reads only the blocks its micro-batches need.

The trainer's batches are those of :func:`mm1.data.batches.micro_batches` (the same sequences in the
same order, so every layout and every resume sees the same data), but nothing holds the whole file:

- :class:`PackedReader` reads one block of rows (a parquet row group, ``mm1.block_rows`` rows) at a
  time and checks it against the block's sha256 in the footer before any of its rows is used; it
  keeps at most ``CACHED_BLOCKS`` blocks. A file written before blocks were hashed is checked once
  when opened, block by block (its whole-file hash), so memory stays bounded either way.
- :class:`RankBatches` is a map-style dataset whose keys are ``(step, k)``: micro-batch k of this
  rank for optimizer step ``step`` (0-based). The step decides which rows are read, so a run that
  resumes at step s reads exactly what the uninterrupted run read from step s on.
- :class:`StepLoader` yields a step's micro-batches, built in the training process (``workers=0``,
  the historical path) or by ``workers`` DataLoader processes that read and decode ahead, in order.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import torch

from mm1.data.batches import PackedData, rank_chunks
from mm1.data.packed_io import (
    BLOCK_ROWS,
    BLOCK_ROWS_KEY,
    BLOCKS_KEY,
    CONTENT_KEY,
    SCHEMA,
    content_sha256,
    new_digest,
    sequences,
    shard_paths,
    update_digest,
)
from mm1.data.packing import PackedSequence

CACHED_SHARDS = 2  # shard readers a sharded reader keeps open (each with its blocks)
CACHED_BLOCKS = 2  # blocks a reader keeps: a micro-batch spans at most two when blocks are not aligned to it
PREFETCH = 2  # micro-batches each loader worker prepares ahead


def _unreadable(path: Path, e: BaseException) -> ValueError:
    return ValueError(f"packed sequence file {path} is not a readable parquet file: {e}")


class PackedReader:
    """The rows of a packed file by global row number, read and hash-checked one block at a time."""

    def __init__(self, path: Path):
        self.path = path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"packed sequence file {path} does not exist; run the packing stage first")
        try:
            meta = pl.read_parquet_metadata(path)
            schema = dict(pl.read_parquet_schema(path))
            self.n = int(pl.scan_parquet(path).select(pl.len()).collect().item())
        except (Exception, pl.exceptions.PanicException) as e:  # several types; a panic is no Exception
            raise _unreadable(path, e) from e
        if schema != SCHEMA:
            raise ValueError(f"packed sequence file {path} has columns {schema}, expected {SCHEMA}")
        if meta.get(CONTENT_KEY) is None:
            raise ValueError(
                f"packed sequence file {path} carries no content hash ({CONTENT_KEY}): it was written before mm1 "
                "recorded one, or not by mm1; rerun the pack stage"
            )
        self.block_rows = int(meta.get(BLOCK_ROWS_KEY, BLOCK_ROWS))
        self.blocks: list[str] | None = meta[BLOCKS_KEY].split() if BLOCKS_KEY in meta else None
        self._cache: OrderedDict[int, list[tuple[int, PackedSequence]]] = OrderedDict()
        if self.blocks is None:
            self._check_whole(meta[CONTENT_KEY])
        elif len(self.blocks) != math.ceil(self.n / self.block_rows):
            raise ValueError(
                f"packed sequence file {path}: {self.n} rows but {len(self.blocks)} block hashes of "
                f"{self.block_rows} rows: it is corrupt or was edited; rerun the pack stage"
            )

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict:  # a loader worker starts with an empty cache
        return self.__dict__ | {"_cache": OrderedDict()}

    def _read(self, block: int) -> list[tuple[int, PackedSequence]]:
        first = block * self.block_rows
        try:
            df = pl.scan_parquet(self.path).slice(first, self.block_rows).collect()
        except (Exception, pl.exceptions.PanicException) as e:
            raise _unreadable(self.path, e) from e
        return sequences(df, self.path, first)

    def _changed(self, found: str, recorded: str, where: str) -> ValueError:
        return ValueError(
            f"packed sequence file {self.path}: its contents changed after it was written ({where} sha256 "
            f"{found[:16]}..., recorded {recorded[:16]}...): it is corrupt or was edited; rerun the pack stage"
        )

    def _check_whole(self, recorded: str) -> None:
        """A file without block hashes: its whole-file hash, one block in memory at a time."""
        digest = new_digest()
        for block in range(math.ceil(self.n / self.block_rows)):
            for index, seq in self._read(block):
                update_digest(digest, index, seq)
        if (found := digest.hexdigest()) != recorded:
            raise self._changed(found, recorded, "file")

    def block(self, block: int) -> list[tuple[int, PackedSequence]]:
        """(global index, sequence) rows of block ``block``, checked against its recorded hash."""
        if block in self._cache:
            self._cache.move_to_end(block)
            return self._cache[block]
        rows = self._read(block)
        if self.blocks is not None and (found := content_sha256(rows)) != self.blocks[block]:
            raise self._changed(found, self.blocks[block], f"block {block}")
        self._cache[block] = rows
        while len(self._cache) > CACHED_BLOCKS:
            self._cache.popitem(last=False)
        return rows

    def rows(self, numbers: np.ndarray) -> list[PackedSequence]:
        """The sequences at file rows ``numbers`` (0-based, in that order)."""
        out = []
        for i in numbers:
            if not 0 <= i < self.n:
                raise IndexError(f"row {i} of packed sequence file {self.path}, which has {self.n}")
            block, offset = divmod(int(i), self.block_rows)
            out.append(self.block(block)[offset][1])
        return out


class ShardedReader:
    """The rows of a sharded packed set (:func:`mm1.data.packed_io.write_shards`) by global row number:
    shard i holds rows ``i * shard_rows ...``; each shard is a :class:`PackedReader`, opened when a row
    of it is asked for (the first and the last when the set is opened, to learn its length)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.shards = shard_paths(self.path)
        self._open: OrderedDict[int, PackedReader] = OrderedDict()
        self.shard_rows: int | None = None  # the first shard's rows; every other is checked against it
        first = self._shard(0)
        self.block_rows, self.shard_rows = first.block_rows, len(first)
        self.n = self.shard_rows * (len(self.shards) - 1) + len(self._shard(len(self.shards) - 1))

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict:  # a loader worker opens its own shards
        return self.__dict__ | {"_open": OrderedDict()}

    def _check(self, i: int, shard: PackedReader) -> None:
        full = i < len(self.shards) - 1
        if shard.block_rows != self.block_rows or (
            len(shard) != self.shard_rows if full else len(shard) > self.shard_rows
        ):
            raise ValueError(
                f"packed sequence set {self.path}: shard {self.shards[i].name} has {len(shard)} rows in blocks of "
                f"{shard.block_rows}, the first {self.shard_rows} in blocks of {self.block_rows}: it was edited; "
                "rerun the pack stage"
            )

    def _shard(self, i: int) -> PackedReader:
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i]
        shard = self._open[i] = PackedReader(self.shards[i])
        if self.shard_rows is not None:
            self._check(i, shard)
        while len(self._open) > CACHED_SHARDS:
            self._open.popitem(last=False)
        return shard

    def rows(self, numbers: np.ndarray) -> list[PackedSequence]:
        """The sequences at global rows ``numbers`` (0-based, in that order)."""
        out = []
        for i in numbers:
            if not 0 <= i < self.n:
                raise IndexError(f"row {i} of packed sequence set {self.path}, which has {self.n}")
            shard, offset = divmod(int(i), self.shard_rows)
            out += self._shard(shard).rows(np.array([offset]))
        return out


def open_packed(path: Path, seq_length: int) -> PackedReader | ShardedReader:
    """A reader of the packed file or sharded set of a run at ``seq_length`` (the checks of
    ``PackedData.load``)."""
    reader = ShardedReader(path) if Path(path).is_dir() else PackedReader(path)
    if not len(reader):
        raise ValueError(f"{path} holds no sequences; rerun the pack stage")
    found = len(reader.rows(np.zeros(1, np.int64))[0].loss_mask)
    if found != seq_length:
        raise ValueError(
            f"{path} was packed for seq_length={found} but model.decoder.seq_length={seq_length}; "
            "rerun the pack stage with this config"
        )
    return reader


class RankBatches(torch.utils.data.Dataset):
    """Key ``(step, k)`` -> micro-batch k of this data-parallel rank for 0-based step ``step``, as
    :func:`mm1.data.batches.micro_batches` gives it (tensors, images decoded at ``image_size``)."""

    def __init__(
        self,
        reader: PackedReader | ShardedReader,
        image_size: int,
        global_batch: int,
        micro_batch: int,
        dp_rank: int,
        dp_size: int,
    ):
        self.reader, self.image_size = reader, image_size
        self.global_batch, self.micro_batch, self.dp_rank, self.dp_size = global_batch, micro_batch, dp_rank, dp_size
        self.per_step = global_batch // (micro_batch * dp_size)

    def chunks(self, step: int) -> np.ndarray:
        """(micro-batches, micro_batch) file rows this rank reads at ``step``."""
        return rank_chunks(len(self.reader), step, self.global_batch, self.micro_batch, self.dp_rank, self.dp_size)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        step, k = key
        seqs = self.reader.rows(self.chunks(step)[k])
        return PackedData(seqs, self.image_size).batch(np.arange(len(seqs)))

    def keys(self, start: int, stop: int) -> _Keys:
        """Keys of steps ``start .. stop - 1`` in training order."""
        return _Keys(start, stop, self.per_step)


class _Keys(torch.utils.data.Sampler):
    """(step, k) for steps start .. stop - 1 and k < per_step, generated as they are asked for."""

    def __init__(self, start: int, stop: int, per_step: int):
        self.start, self.stop, self.per_step = start, stop, per_step

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((step, k) for step in range(self.start, self.stop) for k in range(self.per_step))

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.per_step


def _as_is(item):  # DataLoader's collate_fn: a micro-batch is already built
    return item


class StepLoader:
    """A step's micro-batches for this rank, in order, from ``workers`` processes (0: in this one).

    Workers are started once, at the first step asked for, and run ahead over the keys up to
    ``last_step``; asking for any other step than the next one restarts them there (a resume
    starts wherever its checkpoint was). Workers are spawned, not forked: the training process
    runs polars' and gloo's threads, which a fork would copy in an unknown state.
    """

    def __init__(self, batches: RankBatches, last_step: int, workers: int = 0):
        if workers < 0:
            raise ValueError(f"loader workers must be 0 (in-process) or more, got {workers}")
        self.batches, self.last_step, self.workers = batches, last_step, workers
        self._it: Iterator | None = None
        self._next = -1

    def step(self, step: int) -> Iterator[dict[str, torch.Tensor]]:
        """The micro-batches of 0-based optimizer step ``step``."""
        if not self.workers:
            return (self.batches[key] for key in self.batches.keys(step, step + 1))
        if self._it is None or step != self._next:
            self.close()
            loader = torch.utils.data.DataLoader(
                self.batches,
                batch_size=None,
                sampler=self.batches.keys(step, max(self.last_step, step + 1)),
                num_workers=self.workers,
                collate_fn=_as_is,
                prefetch_factor=PREFETCH,
                multiprocessing_context="spawn",
            )
            self._it = iter(loader)
        self._next = step + 1
        return (next(self._it) for _ in range(self.batches.per_step))

    def close(self) -> None:
        """Stop the workers (if any run)."""
        if self._it is not None and hasattr(self._it, "_shutdown_workers"):
            self._it._shutdown_workers()
        self._it = None
