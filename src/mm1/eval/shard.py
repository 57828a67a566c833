"""Data-parallel evaluation: each data-parallel rank runs its share of the batches, every rank gets all results.

The batches are formed exactly as one process forms them (same order, same contents), and batch i
runs on data-parallel rank i mod dp (round robin: the batches come sorted by length, so each rank
gets short and long ones alike). The tensor-parallel ranks of one data-parallel rank run the same
batches together (their collectives need it); only TP rank 0 contributes its results to the
gather. Since no batch changes with the number of ranks, an evaluation on N ranks computes every
batch as one rank would, and writes byte-identical files (tests/eval/test_parallel_eval.py), given
the same kernels (e.g. the same OpenMP thread count on CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def _layout() -> tuple[int, int, bool]:
    """(data-parallel rank, data-parallel size, whether this rank reports) of this process."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return 0, 1, True
    from megatron.core import parallel_state

    dp, size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    return dp, size, parallel_state.get_tensor_model_parallel_rank() == 0


def mine(n: int) -> list[int]:
    """The indices of ``n`` batches this process runs."""
    dp, size, _ = _layout()
    return list(range(dp, n, size))


def map_batches(batches: Sequence[T], run: Callable[[T], R], wrap: Callable[[Iterable], Iterable] = iter) -> list[R]:
    """``[run(b) for b in batches]``, each batch run on its data-parallel rank; every rank returns
    the whole list, in order. ``wrap`` wraps the iteration over this rank's batches (a progress bar)."""
    dp, size, reports = _layout()
    if size == 1:  # one process, or tensor parallel only: every rank runs every batch
        return [run(b) for b in wrap(batches)]
    done = {i: run(batches[i]) for i in wrap(mine(len(batches)))}
    gathered: list[dict[int, R] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, done if reports else {})
    merged: dict[int, R] = {}
    for part in gathered:
        merged |= part or {}
    missing = [i for i in range(len(batches)) if i not in merged]
    if missing:  # a broken layout, not a user error: every batch has exactly one data-parallel owner
        raise RuntimeError(f"evaluation batches {missing[:5]} were run by no data-parallel rank (dp={dp}/{size})")
    return [merged[i] for i in range(len(batches))]
