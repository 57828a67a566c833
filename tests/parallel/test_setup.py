"""Process-group setup: a plain process gets a private 1-rank group and leaves the environment alone."""

from __future__ import annotations

import os

import pytest
import torch

from mm1.config import ParallelConfig
from mm1.parallel.setup import distributed

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)


def test_single_process_group_does_not_leak_launcher_variables():
    with distributed(ParallelConfig(), seed=3) as rank:
        assert rank.world_size == 1 and rank.rank == 0 and rank.dp_size == 1
        assert torch.distributed.is_initialized()
        # Child processes (e.g. `mm1 train` relaunching under torchrun) must not think they
        # already run under a launcher.
        assert not any(var in os.environ for var in LAUNCHER_VARS)
    assert not torch.distributed.is_initialized()


def test_two_groups_in_a_row_get_fresh_ports():
    for seed in (1, 2):
        with distributed(ParallelConfig(), seed=seed):
            pass


def test_world_size_mismatch_names_the_fix():
    with pytest.raises(RuntimeError, match=r"torchrun --nproc-per-node 2"):
        with distributed(ParallelConfig(world_size=2), seed=0):
            pass


def test_group_is_torn_down_after_an_error():
    with pytest.raises(ZeroDivisionError):
        with distributed(ParallelConfig(), seed=0):
            _ = 1 / 0
    assert not torch.distributed.is_initialized()
