"""Item 4, the file between packing and training: a damaged packed-sequence parquet is an error
naming the file (``ValueError``), never a panic from inside polars or a silently shorter epoch."""

from __future__ import annotations

import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mm1.data.packed_io import read_packed

pytestmark = pytest.mark.faults(item=4)


@pytest.fixture(scope="module")
def packed(world, tmp_path_factory):
    """The tiny packed file, its sequences and its bytes."""
    path = tmp_path_factory.mktemp("packed") / "train.parquet"
    shutil.copy(world["packed"], path)
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
    # a flip inside a value parquet does not checksum: the file must still hold every sequence
    assert len(got) == len(sequences)
