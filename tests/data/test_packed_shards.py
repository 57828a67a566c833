"""The pack stage's sharded set: a folder of packed files of at most SHARD_BLOCKS blocks each, read
back as one sequence of rows by every reader, published only when complete."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_packed_writer import _seqs
from test_stream import SEQ, _sequences

from mm1.data.packed_io import BLOCKS_KEY, read_packed_indexed, shard_name, write_shards
from mm1.data.stream import RankBatches, ShardedReader, open_packed


def _rows(n: int, seed: int = 0) -> list:
    return list(zip(range(100, 100 + n), _seqs(n, seed=seed), strict=True))


@pytest.mark.parametrize(("n", "shards"), [(0, 1), (1, 1), (6, 1), (7, 2), (12, 2), (17, 3)])
def test_rows_go_to_shards_of_whole_blocks_and_read_back_in_order(tmp_path: Path, n: int, shards: int) -> None:
    rows = _rows(n)
    path = write_shards(iter(rows), tmp_path / "train.parquet", block_rows=2, shard_blocks=3)
    assert sorted(p.name for p in path.iterdir()) == [shard_name(i, shards) for i in range(shards)]
    (path / ".snakemake_timestamp").touch()  # what Snakemake leaves in a folder output: not a shard
    for i, shard in enumerate(sorted(path.glob("part-*"))):  # 6 rows = 3 blocks per shard, the last shorter
        assert len(pl.read_parquet_metadata(shard)[BLOCKS_KEY].split()) == len(rows[6 * i : 6 * i + 6][::2])
    assert read_packed_indexed(path) == rows
    assert pl.read_parquet(path)["index"].to_list() == [i for i, _ in rows]  # a parquet folder, as polars reads it
    reader = ShardedReader(path)
    order = np.random.default_rng(1).permutation(n)
    assert len(reader) == n and reader.rows(order) == [rows[i][1] for i in order]
    with pytest.raises(IndexError, match=f"row {n} of packed sequence set"):
        reader.rows(np.array([n]))
    assert [p.name for p in tmp_path.iterdir()] == ["train.parquet"]  # no temporary left behind


def test_a_rank_reads_the_same_micro_batches_from_shards_as_from_one_file(tmp_path: Path) -> None:
    rows = list(enumerate(_sequences(24)))  # real images: the micro-batches decode them
    one = write_shards(iter(rows), tmp_path / "one", block_rows=4, shard_blocks=100)
    many = write_shards(iter(rows), tmp_path / "many", block_rows=4, shard_blocks=1)
    assert len(list(one.iterdir())) == 1 and len(list(many.iterdir())) == 6
    for dp_rank in (0, 1):
        a, b = (RankBatches(open_packed(p, SEQ), 16, 8, 2, dp_rank, 2) for p in (one, many))
        for key in [(0, 0), (0, 1), (2, 1), (5, 0)]:
            for name, tensor in a[key].items():
                assert tensor.equal(b[key][name]), (dp_rank, key, name)


def test_a_missing_foreign_or_edited_shard_is_refused_naming_the_set(tmp_path: Path) -> None:
    rows = _rows(17)
    path = write_shards(iter(rows), tmp_path / "train.parquet", block_rows=2, shard_blocks=3)
    (path / shard_name(1, 3)).rename(tmp_path / "aside.parquet")
    with pytest.raises(ValueError, match=r"train.parquet is not a complete set of shards .*rerun the pack stage"):
        ShardedReader(path)
    (tmp_path / "aside.parquet").rename(path / shard_name(1, 3))
    (path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unexpected: notes.txt"):
        read_packed_indexed(path)
    (path / "notes.txt").unlink()
    write_shards(iter(rows[:4]), tmp_path / "short", block_rows=2, shard_blocks=3)  # a middle shard of 4 rows
    (path / shard_name(1, 3)).unlink()
    (tmp_path / "short" / shard_name(0, 1)).rename(path / shard_name(1, 3))
    reader = ShardedReader(path)
    with pytest.raises(ValueError, match=r"shard part-00001-of-00003.parquet has 4 rows .* it was edited"):
        reader.rows(np.array([7]))


def test_a_failed_write_leaves_the_old_set_and_no_temporary(tmp_path: Path) -> None:
    old = write_shards(iter(_rows(5)), tmp_path / "train.parquet", block_rows=2, shard_blocks=1)

    def failing():
        yield from _rows(9, seed=1)[:7]
        raise RuntimeError("the sampler failed")

    with pytest.raises(RuntimeError, match="the sampler failed"):
        write_shards(failing(), old, block_rows=2, shard_blocks=1)
    assert [i for i, _ in read_packed_indexed(old)] == list(range(100, 105))
    assert [p.name for p in tmp_path.iterdir()] == ["train.parquet"]
    new = write_shards(iter(_rows(9, seed=1)), old, block_rows=2, shard_blocks=2)  # replaces the old set whole
    assert read_packed_indexed(new) == _rows(9, seed=1) and len(list(new.iterdir())) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["train.parquet"]
