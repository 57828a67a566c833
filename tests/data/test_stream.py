"""The streaming data path (:mod:`mm1.data.stream`): the same micro-batches as the in-memory reader,
for every data-parallel rank, after a resume and from loader workers; corrupt blocks refused.
(Peak memory flat in the number of sequences: tests/train/test_stream_train.py.)"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from mm1.data.batches import PackedData, micro_batches
from mm1.data.packed_io import BLOCKS_KEY, write_packed
from mm1.data.packing import PackedSequence
from mm1.data.stream import PackedReader, RankBatches, StepLoader, open_packed

SEQ, SIZE, GLOBAL, MICRO = 12, 8, 8, 2


def _png(rng: np.random.Generator, px: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _sequences(n: int, seed: int = 0) -> list[PackedSequence]:
    rng = np.random.default_rng(seed)
    return [
        PackedSequence(
            tokens=rng.integers(0, 50, SEQ + 1).astype(np.int32),
            loss_mask=rng.integers(0, 2, SEQ).astype(np.uint8),
            images=[_png(rng) for _ in range(int(rng.integers(0, 3)))],
            source="caption",
        )
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict[int, Path]:
    """20 sequences (not a whole number of steps: the stream wraps) in blocks of 3 and of 2 rows."""
    seqs, root = _sequences(20), tmp_path_factory.mktemp("stream")
    return {rows: write_packed(seqs, root / f"blocks{rows}.parquet", block_rows=rows) for rows in (2, 3)}


def _same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key in w:
            assert g[key].dtype == w[key].dtype and torch.equal(g[key], w[key]), key


def _expected(path: Path, step: int, dp_rank: int, dp_size: int) -> list[dict]:
    data = PackedData.load(path, SEQ, SIZE)
    return list(micro_batches(data, step, GLOBAL, MICRO, dp_rank, dp_size))


@pytest.mark.parametrize("block_rows", [2, 3])
@pytest.mark.parametrize("dp_size", [1, 2])
def test_streamed_micro_batches_equal_the_in_memory_ones(packed, block_rows, dp_size):
    path = packed[block_rows]
    for dp_rank in range(dp_size):
        loader = StepLoader(RankBatches(open_packed(path, SEQ), SIZE, GLOBAL, MICRO, dp_rank, dp_size), last_step=5)
        for step in (0, 1, 2, 3, 4):  # 20 rows, 8 a step: steps 2 and 4 wrap around the file
            _same(list(loader.step(step)), _expected(path, step, dp_rank, dp_size))


def test_a_rank_reads_only_the_blocks_of_its_micro_batches(packed):
    """Blocks of 2 rows = one micro-batch each: of a step's 4 blocks, each of 2 ranks reads its 2."""
    reader = open_packed(packed[2], SEQ)
    read = []
    real = reader._read
    reader._read = lambda block: read.append(block) or real(block)
    reader._cache.clear()
    batches = RankBatches(reader, SIZE, GLOBAL, MICRO, dp_rank=1, dp_size=2)
    list(StepLoader(batches, last_step=1).step(0))
    assert read == [1, 3]  # rows 2-3 and 6-7: micro-batches 1 and 3 of step 0


def test_loader_workers_give_the_same_batches_in_order_and_resume_anywhere(packed):
    """One spawned worker: steps 0, 1, then a jump to step 3 (a resume there) restarts it; the
    micro-batches equal the in-process ones, so a resumed run reads what the uninterrupted one did."""
    path = packed[3]
    batches = RankBatches(open_packed(path, SEQ), SIZE, GLOBAL, MICRO, dp_rank=1, dp_size=2)
    loader = StepLoader(batches, last_step=5, workers=1)
    try:
        for step in (0, 1, 3, 4):
            _same(list(loader.step(step)), _expected(path, step, 1, 2))
    finally:
        loader.close()


def test_a_changed_block_is_refused_when_it_is_read(packed, tmp_path):
    """The block hashes in the footer: a block whose rows changed is an error naming the file and
    the block, raised when that block is read (other blocks still read)."""
    df = pl.read_parquet(packed[3])
    meta = pl.read_parquet_metadata(packed[3])
    bad = tmp_path / "train.parquet"
    changed = df.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("interleaved")).otherwise(pl.col("source")).alias("source")
    )
    changed.write_parquet(bad, metadata=meta)
    reader = PackedReader(bad)
    assert len(reader.rows(np.arange(6))) == 6  # blocks 0 and 1 are intact
    with pytest.raises(ValueError, match=rf"{bad}: its contents changed.*block 2 sha256.*rerun the pack stage"):
        reader.rows(np.array([7]))


def test_a_file_without_block_hashes_is_checked_whole_when_opened(packed, tmp_path):
    meta = pl.read_parquet_metadata(packed[3])
    old = tmp_path / "train.parquet"
    pl.read_parquet(packed[3]).write_parquet(old, metadata={k: v for k, v in meta.items() if k != BLOCKS_KEY})
    _same(list(StepLoader(RankBatches(open_packed(old, SEQ), SIZE, GLOBAL, MICRO, 0, 1), 2).step(1)),
          _expected(packed[3], 1, 0, 1))  # fmt: skip
    df = pl.read_parquet(packed[3]).with_columns(pl.col("index").reverse())
    df.write_parquet(old, metadata={k: v for k, v in meta.items() if k != BLOCKS_KEY})
    with pytest.raises(ValueError, match=rf"{old}: its contents changed.*file sha256"):
        PackedReader(old)


def test_a_packed_file_for_another_sequence_length_is_refused(packed):
    with pytest.raises(ValueError, match=r"packed for seq_length=12 but model.decoder.seq_length=16"):
        open_packed(packed[2], 16)
