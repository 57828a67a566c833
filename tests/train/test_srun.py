"""Launching under ``srun``: two tasks with SLURM's variables (no torchrun) rendezvous by
themselves and train like a torchrun launch."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import polars as pl
import pytest

from mm1.parallel.launch import first_host, torch_env_from_slurm, under_launcher
from tinykit import TINY, train_inputs


@pytest.mark.parametrize(
    ("nodelist", "host"), [("gpu[03-05,9],cpu1", "gpu03"), ("cpu1,cpu2", "cpu1"), ("localhost", "localhost")]
)
def test_first_host_of_a_slurm_node_list(nodelist: str, host: str) -> None:
    assert first_host(nodelist) == host


def test_srun_variables_become_torch_rendezvous_variables(monkeypatch) -> None:
    # A private environment: the variables the function sets must not leak into later tests.
    slurm = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456"}
    monkeypatch.setattr(os, "environ", {**slurm, "SLURM_JOB_NODELIST": "gpu[07-08]"})
    assert under_launcher()
    torch_env_from_slurm()
    got = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    assert got == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07", "MASTER_PORT": "23456"}


@pytest.mark.parametrize("env", [{"SLURM_STEP_NUM_TASKS": "1"}, {"SLURM_NTASKS": "8"}])  # 1-task step; batch script
def test_one_slurm_process_is_not_a_launcher(monkeypatch, env: dict) -> None:
    monkeypatch.setattr(os, "environ", {"SLURM_PROCID": "0", **env})
    assert not under_launcher()  # mm1 re-launches itself under torchrun for world_size > 1


@pytest.mark.multiprocess
def test_two_srun_tasks_train_together(tiny_world, tmp_path: Path) -> None:
    sets = [a for s in [*TINY, "parallel.world_size=2", "train.steps=3"] for a in ("--set", s)]
    args = ["mm1", "train", *train_inputs(tiny_world)]
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    slurm = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_ID": str(os.getpid()), "SLURM_JOB_NODELIST": "127.0.0.1"}
    procs = [
        subprocess.Popen(
            [*args, "--out", str(tmp_path / "run"), *sets],
            env={**base, **slurm, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r), "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    metrics = pl.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["step"].to_list() == [1, 2, 3]
