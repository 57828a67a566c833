"""Which launcher a multi-process stage re-runs itself under, and the exact command.

The environment is replaced by a private dict for each test (monkeypatch), and the launch itself
(``run_supervised``) by a recorder: nothing is started here. ``tests/slurm`` runs them for real.
"""

from __future__ import annotations

import os
import sys

import pytest

from mm1.config import ParallelConfig
from mm1.parallel import launch

ARGV = ["train", "--config-json", "{}", "--out", "results/train/base"]
MM1 = [sys.executable, "-m", "mm1.cli", *ARGV]


@pytest.fixture
def launched(monkeypatch) -> list[tuple[list[str], dict]]:
    """The (command, environment) pairs relaunch_if_needed hands to run_supervised."""
    calls: list[tuple[list[str], dict]] = []

    def record(cmd: list[str], env: dict) -> int:
        calls.append((cmd, env))
        return 0

    monkeypatch.setattr("mm1.parallel.launch.run_supervised", record)
    return calls


def relaunch(monkeypatch, env: dict[str, str], world_size: int) -> int | None:
    monkeypatch.setattr(os, "environ", dict(env))
    return launch.relaunch_if_needed(ParallelConfig(world_size=world_size), ARGV)


def test_one_process_runs_as_is(monkeypatch, launched) -> None:
    assert relaunch(monkeypatch, {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "4"}, world_size=1) is None
    assert launched == []


@pytest.mark.parametrize(
    "env",
    [
        {"WORLD_SIZE": "2", "RANK": "1"},  # a torchrun worker
        # one of the tasks of a two-node srun step
        {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"},
    ],
)
def test_a_process_started_by_a_launcher_runs_as_is(monkeypatch, launched, env: dict) -> None:
    assert relaunch(monkeypatch, env, world_size=2) is None
    assert launched == []


@pytest.mark.parametrize(
    "env",
    [
        {"OMP_NUM_THREADS": "8"},  # by hand or Snakemake's local executor
        {"OMP_NUM_THREADS": "8", "SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "1", "SLURM_PROCID": "0"},  # 1-node job
        {"OMP_NUM_THREADS": "8", "SLURM_JOB_NUM_NODES": "3"},  # a variable left over, outside any job
    ],
)
def test_one_node_relaunches_under_torchrun(monkeypatch, launched, env: dict) -> None:
    assert relaunch(monkeypatch, env, world_size=4) == 0
    [(cmd, child_env)] = launched
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", *MM1[2:]]
    assert child_env["OMP_NUM_THREADS"] == "2"  # the 8 cores shared by 4 processes


def test_several_nodes_relaunch_under_srun(monkeypatch, launched) -> None:
    # A Snakemake SLURM job with nodes=2, tasks=8, cpus_per_task=6: the rule's command runs as a
    # one-task srun step on the first node (snakemake-executor-plugin-slurm-jobstep).
    step = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1", "SLURM_NNODES": "1"}
    job = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_CPUS_PER_TASK": "6", "PATH": "/usr/bin"}
    assert relaunch(monkeypatch, {**job, **step}, world_size=8) == 0
    [(cmd, child_env)] = launched
    assert cmd == [
        "srun",
        "--nodes=2",
        "--ntasks=8",
        "--ntasks-per-node=4",
        "--overlap",  # shares the CPUs and GPUs of the one-task step it is started from
        "--mem=0",  # and its memory
        "--kill-on-bad-exit=1",
        "--cpus-per-task=6",
        *MM1,
    ]
    assert child_env["OMP_NUM_THREADS"] == "6" and child_env["PATH"] == "/usr/bin"


def test_srun_without_cpus_per_task_shares_the_node(monkeypatch) -> None:
    monkeypatch.setattr(os, "environ", {"SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_CPUS_ON_NODE": "32"})
    cmd, env = launch.srun_command(world_size=4, nodes=2, argv=ARGV)
    assert not any(arg.startswith("--cpus-per-task") for arg in cmd)
    assert env["OMP_NUM_THREADS"] == "16"  # 32 CPUs of the node, 2 tasks on it


def test_world_size_that_does_not_divide_over_the_nodes_is_refused(monkeypatch, launched) -> None:
    with pytest.raises(ValueError, match=r"parallel\.world_size=6 does not divide over the 4 nodes"):
        relaunch(monkeypatch, {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "4"}, world_size=6)
    assert launched == []
