"""Item 4, the file between packing and training: a damaged packed-sequence parquet is an error
naming the file (``ValueError``), never a panic from inside polars, a silently shorter epoch or a
silently changed sequence: the content hash written with the file (``mm1.content_sha256`` in the
parquet footer) is checked on every read."""

from __future__ import annotations

import shutil

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mm1.data.batches import PackedData
from mm1.data.packed_io import CONTENT_KEY, read_packed, read_packed_indexed, shard_paths

pytestmark = pytest.mark.faults(item=4)


@pytest.fixture(scope="module")
def packed(tiny_world, tmp_path_factory):
    """The tiny packed set's one shard (a packed file), its sequences and its bytes."""
    (shard,) = shard_paths(tiny_world["packed"])
    path = tmp_path_factory.mktemp("packed") / "train.parquet"
    shutil.copy(shard, path)
    return path, read_packed(path), path.read_bytes()


@settings(max_examples=120)
@given(
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=3),
    keep=st.one_of(st.none(), st.floats(0, 1, exclude_max=True)),
)
def test_damaged_packed_file_is_an_error_naming_it_or_reads_whole(packed, tmp_path_factory, flips, keep):
    path, sequences, data = packed
    damaged = bytearray(data)
    for where, xor in flips:
        damaged[int(where * len(damaged))] ^= xor
    if keep is not None:
        damaged = damaged[: int(keep * len(damaged))]
    bad = tmp_path_factory.mktemp("damaged") / "train.parquet"
    bad.write_bytes(bytes(damaged))
    try:
        got = read_packed(bad)
    except ValueError as e:
        assert str(bad) in str(e)
        return
    # read without an error: then it is the very content that was written, not just as many rows
    assert got == sequences


def _rewritten(df: pl.DataFrame, path, metadata: dict[str, str] | None) -> None:
    df.write_parquet(path, metadata=metadata)


@pytest.mark.parametrize(
    "change",
    [
        pl.col("tokens").list.eval(pl.when(pl.int_range(pl.len()) == 5).then(pl.element() + 1).otherwise(pl.element())),
        pl.col("loss_mask").list.eval(1 - pl.element()),
        pl.col("index").reverse(),
        pl.col("source").reverse(),
        pl.col("images").list.reverse(),
    ],
    ids=["one-token", "loss-mask", "order", "source", "image-order"],
)
def test_changed_content_with_the_same_rows_is_an_error_naming_the_file(packed, tmp_path, change):
    """A valid parquet file of the same schema and row count whose content differs (one token, the
    loss mask, the order...) is refused by the trainer's reader, naming the file and what to do."""
    path, sequences, _ = packed
    df = pl.read_parquet(path)
    changed = df.with_columns(change)
    assert changed.height == df.height and not changed.equals(df)
    bad = tmp_path / "train.parquet"
    _rewritten(changed, bad, pl.read_parquet_metadata(path))  # the hash recorded for the original content
    with pytest.raises(ValueError, match=r"contents changed after it was written.*rerun the pack stage") as e:
        PackedData.load(bad, seq_length=len(sequences[0].loss_mask), image_size=32)
    assert str(bad) in str(e.value)


def test_a_packed_file_without_a_content_hash_is_refused(packed, tmp_path):
    path, sequences, _ = packed
    old = tmp_path / "train.parquet"
    _rewritten(pl.read_parquet(path), old, None)
    with pytest.raises(ValueError, match=rf"{old} carries no content hash \({CONTENT_KEY}\).*rerun the pack stage"):
        read_packed(old)
    _rewritten(pl.read_parquet(path), old, pl.read_parquet_metadata(path))  # same content, same hash: reads
    assert [s for _, s in read_packed_indexed(old)] == sequences
