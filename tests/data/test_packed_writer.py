"""The packed file written block by block: the same bytes-level layout and hashes as one whole
write, published only when complete, and on disk while the rows are still being drawn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from mm1.data.packed_io import (
    BLOCK_ROWS_KEY,
    BLOCKS_KEY,
    CONTENT_KEY,
    SCHEMA,
    PackedWriter,
    content_sha256,
    read_packed_indexed,
    write_packed,
    write_rows,
)
from mm1.data.packing import PackedSequence
from mm1.data.stream import PackedReader

SOURCES = ("caption", "interleaved", "text")


def _seqs(n: int, width: int = 9, image_bytes: int = 40, seed: int = 0) -> list[PackedSequence]:
    """``n`` sequences of ``width`` tokens, 0-3 random images each, sources in turn."""
    rng = np.random.default_rng(seed)
    return [
        PackedSequence(
            tokens=rng.integers(0, 300, width).astype(np.int32),
            loss_mask=(rng.random(width - 1) < 0.5).astype(np.uint8),
            images=[rng.bytes(image_bytes) for _ in range(i % 4)],
            source=SOURCES[i % 3],
        )
        for i in range(n)
    ]


@pytest.mark.parametrize(("n", "block_rows"), [(0, 4), (1, 4), (10, 1), (10, 4), (12, 4), (10, 16)])
def test_footer_holds_the_hashes_of_the_rows_and_of_each_block(tmp_path: Path, n: int, block_rows: int) -> None:
    seqs, indices = _seqs(n), list(range(7, 7 + 3 * n, 3))
    path = write_packed(seqs, tmp_path / "train.parquet", indices=indices, block_rows=block_rows)
    rows = list(zip(indices, seqs, strict=True))
    meta = pl.read_parquet_metadata(path)
    assert meta[CONTENT_KEY] == content_sha256(rows)
    assert meta[BLOCK_ROWS_KEY] == str(block_rows)
    assert meta[BLOCKS_KEY].split() == [content_sha256(rows[i : i + block_rows]) for i in range(0, n, block_rows)]
    footer = pq.ParquetFile(path).metadata  # one row group per block, the last one partial
    groups = [footer.row_group(g).num_rows for g in range(footer.num_row_groups)]
    assert groups == [min(block_rows, n - i) for i in range(0, n, block_rows)]
    assert dict(pl.read_parquet_schema(path)) == SCHEMA
    assert read_packed_indexed(path) == rows
    reader = PackedReader(path)
    assert len(reader) == n and reader.rows(np.arange(n)[::-1]) == seqs[::-1]
    assert [p.name for p in tmp_path.iterdir()] == ["train.parquet"]  # no temporary left behind


def test_each_block_is_written_as_soon_as_its_rows_are_drawn(tmp_path: Path) -> None:
    """At most one block of drawn rows waits in memory: block k goes to disk when its last row comes."""
    seqs, drawn, written_at = _seqs(11), [], []

    class Spy(PackedWriter):
        def _flush(self) -> None:
            if self._block:
                written_at.append(len(drawn))
            super()._flush()

    path = tmp_path / "train.parquet"
    with Spy(path, block_rows=4) as writer:
        for i, seq in enumerate(seqs):
            drawn.append(i)
            writer.add(i, seq)
    assert written_at == [4, 8, 11]
    assert read_packed_indexed(path) == list(enumerate(seqs))


def test_a_failed_write_leaves_no_file_under_the_name(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    seqs = _seqs(9)

    def broken():
        yield from enumerate(seqs[:6])
        raise RuntimeError("the sampler broke")

    with pytest.raises(RuntimeError, match="the sampler broke"):
        write_rows(broken(), path, block_rows=2)
    assert list(tmp_path.iterdir()) == []
    ragged = [*seqs[:5], _seqs(1, width=12)[0]]
    with pytest.raises(ValueError, match="one sequence length"):
        write_packed(ragged, path, block_rows=2)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="block_rows must be at least 1"):
        write_packed(seqs, path, block_rows=0)


KILLED = """
import sys
from pathlib import Path
import numpy as np
from mm1.data.packed_io import write_rows
from mm1.data.packing import PackedSequence

def rows():
    for i in range(10**9):
        if i == 3 * 4:  # three blocks of 4 drawn: say so and wait to be killed
            print("drawn", flush=True)
            sys.stdin.read()
        image = np.random.default_rng(i).bytes(64 * 1024)
        yield i, PackedSequence(np.zeros(9, np.int32), np.ones(8, np.uint8), [image], "caption")

write_rows(rows(), Path(sys.argv[1]), block_rows=4)
"""


def test_a_killed_writer_leaves_only_a_temporary_that_the_next_write_removes(tmp_path: Path) -> None:
    """Blocks are on disk while rows are still being drawn (under a temporary name), the final name
    never holds a partial file, and the next write clears what the killed one left."""
    path = tmp_path / "train.parquet"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "drawn"  # blocks until the child has drawn 12 rows
        (tmp,) = tmp_path.iterdir()
        assert tmp.name.startswith(".train.parquet.") and tmp.name.endswith(".tmp")
        assert tmp.stat().st_size > 2 * 4 * 64 * 1024  # at least two blocks of incompressible images written
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdin.close()
        child.stdout.close()
    assert not path.exists()
    seqs = _seqs(5)
    write_packed(seqs, path, block_rows=2)
    assert [p.name for p in tmp_path.iterdir()] == ["train.parquet"]
    assert [s for _, s in read_packed_indexed(path)] == seqs
