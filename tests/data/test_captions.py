"""Seeded global-batch order and the split of a global batch over data-parallel ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mm1.config import ConfigError, load
from mm1.data.captions import CaptionSet, global_batch_indices, micro_batches

N, S = 24, 6


def _caption_set(n: int = N) -> CaptionSet:
    """Row i of every tensor holds the value i, so a batch reveals which samples it took."""
    rows = torch.arange(n)
    return CaptionSet(
        ids=[f"s{i}" for i in range(n)],
        tokens=rows[:, None].expand(n, S).clone(),
        labels=(rows[:, None] + 1000).expand(n, S).clone(),
        loss_mask=torch.ones(n, S),
        images=rows[:, None, None, None].float().expand(n, 3, 4, 4).clone(),
        truncated=0,
    )


def _epoch(n: int, global_batch: int, seed: int, epoch: int) -> np.ndarray:
    steps = n // global_batch
    return np.concatenate([global_batch_indices(n, global_batch, epoch * steps + s, seed) for s in range(steps)])


# --- global batch order -------------------------------------------------------------------------


def test_global_batch_is_deterministic_for_a_seed() -> None:
    for step in range(5):
        a = global_batch_indices(N, 8, step, seed=7)
        b = global_batch_indices(N, 8, step, seed=7)
        assert a.dtype == np.int64
        assert a.shape == (8,)
        assert np.array_equal(a, b)


def test_global_batch_differs_by_seed() -> None:
    a = np.concatenate([global_batch_indices(N, 8, s, seed=1) for s in range(3)])
    b = np.concatenate([global_batch_indices(N, 8, s, seed=2) for s in range(3)])
    assert not np.array_equal(a, b)
    assert sorted(a) == sorted(b) == list(range(N))  # same samples, other order


@pytest.mark.parametrize("global_batch", [1, 4, 8, 24])
def test_every_sample_once_per_epoch(global_batch: int) -> None:
    for epoch in range(3):
        order = _epoch(N, global_batch, seed=3, epoch=epoch)
        assert sorted(order.tolist()) == list(range(N))


def test_order_is_shuffled_and_reshuffled_each_epoch() -> None:
    first, second = _epoch(N, 8, 5, 0), _epoch(N, 8, 5, 1)
    assert not np.array_equal(first, np.arange(N))
    assert not np.array_equal(first, second)


def test_global_batch_crossing_an_epoch_boundary() -> None:
    n, gb = 10, 4  # steps 0..4 cover exactly two epochs; steps 2 straddles the boundary
    flat = np.concatenate([global_batch_indices(n, gb, s, seed=11) for s in range(5)])
    first, second = flat[:n], flat[n:]
    assert sorted(first.tolist()) == list(range(n))
    assert sorted(second.tolist()) == list(range(n))
    # the straddling step takes the end of epoch 0 and the start of epoch 1, with no repeats within it
    straddle = global_batch_indices(n, gb, 2, seed=11)
    assert straddle.tolist() == flat[8:12].tolist()
    assert straddle[:2].tolist() == first[8:].tolist()
    assert straddle[2:].tolist() == second[:2].tolist()


def test_global_batch_larger_than_the_data() -> None:
    n, gb = 5, 12
    batch = global_batch_indices(n, gb, 0, seed=0)
    counts = np.bincount(batch, minlength=n)
    assert counts.sum() == gb
    assert counts.min() >= 2 and counts.max() <= 3  # two full epochs plus two samples of the third


def test_order_does_not_depend_on_what_was_asked_before() -> None:
    # cached permutations must not leak between (n, seed, epoch) keys
    want = global_batch_indices(N, 8, 10, seed=9)
    for seed in range(10):
        global_batch_indices(N, 8, 10, seed=seed)
        global_batch_indices(N + 1, 8, 10, seed=seed)
    assert np.array_equal(global_batch_indices(N, 8, 10, seed=9), want)


def test_every_seed_the_config_accepts_orders_the_data() -> None:
    # train.seed feeds global_batch_indices; a seed the config accepts must not crash the data order.
    try:
        seed = load(None, ["train.seed=-1"]).train.seed
    except ConfigError:
        return
    assert sorted(global_batch_indices(N, N, 0, seed).tolist()) == list(range(N))


# --- micro-batches per data-parallel rank -------------------------------------------------------


@pytest.mark.parametrize("dp", [1, 2, 4])
@pytest.mark.parametrize("step", [0, 3])
def test_micro_batches_partition_the_global_batch(dp: int, step: int) -> None:
    data, gb, mb, seed = _caption_set(), 16, 2, 123
    want = global_batch_indices(len(data), gb, step, seed)
    taken: list[int] = []
    for rank in range(dp):
        batches = list(micro_batches(data, step, seed, gb, mb, rank, dp))
        assert len(batches) == gb // (mb * dp)  # gradient-accumulation steps of this rank
        for b in batches:
            assert b["tokens"].shape == (mb, S)
            assert b["labels"].shape == (mb, S)
            assert b["loss_mask"].shape == (mb, S)
            assert b["images"].shape == (mb, 3, 4, 4)
            rows = b["tokens"][:, 0]
            # all fields of a micro-batch come from the same samples
            assert torch.equal(b["labels"][:, 0], rows + 1000)
            assert torch.equal(b["images"][:, 0, 0, 0].long(), rows)
            taken.extend(rows.tolist())
    assert len(taken) == len(set(taken)) == gb  # no overlap between ranks or micro-batches
    assert sorted(taken) == sorted(want.tolist())


def test_rank_r_takes_micro_batches_r_r_plus_dp() -> None:
    data, gb, mb, seed, dp = _caption_set(), 16, 2, 1, 2
    chunks = global_batch_indices(len(data), gb, 0, seed).reshape(-1, mb)
    for rank in range(dp):
        got = [b["tokens"][:, 0].tolist() for b in micro_batches(data, 0, seed, gb, mb, rank, dp)]
        assert got == chunks[rank::dp].tolist()


def test_samples_of_a_step_do_not_depend_on_the_layout() -> None:
    data, gb, seed = _caption_set(), 16, 4
    layouts = [(1, 16), (1, 4), (2, 4), (4, 2), (8, 2)]  # (dp, micro_batch)
    seen = []
    for dp, mb in layouts:
        rows = [
            r for rank in range(dp) for b in micro_batches(data, 2, seed, gb, mb, rank, dp) for r in b["tokens"][:, 0]
        ]
        seen.append(sorted(int(r) for r in rows))
    assert all(s == seen[0] for s in seen)
