"""mm1's srun re-launch (``mm1.parallel.launch.srun_command``, used in multi-node jobs) run for real:
from a one-task step, as Snakemake's SLURM jobs run a rule's command, it starts the training's tasks
as a second step that shares the job's CPUs and memory. One node here; the command is the same."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from slurmkit import sbatch, wait_for_sacct

from tinykit import TINY, train_inputs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

RELAUNCH = (
    "import sys; from mm1.parallel.launch import srun_command; from mm1.parallel.supervise import run_supervised; "
    "sys.exit(run_supervised(*srun_command(2, 1, sys.argv[1:])))"
)


def test_srun_relaunch_from_a_one_task_step_trains(tiny_world, tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = [a for s in [*TINY, "parallel.world_size=2", "train.steps=3"] for a in ("--set", s)]
    argv = ["train", *train_inputs(tiny_world), "--out", str(out)]
    script = tmp_path / "job.sh"
    # What snakemake-executor-plugin-slurm-jobstep runs in the job: the rule's command as one task.
    script.write_text(f"#!/bin/bash\nsrun -n1 {shlex.join([sys.executable, '-c', RELAUNCH, *argv, *sets])}\n")
    log = tmp_path / "job.log"
    job = sbatch("--ntasks=2", "--cpus-per-task=1", f"--output={log}", str(script))
    assert wait_for_sacct([job]) == {job: ["COMPLETED"]}, log.read_text()[-4000:]

    assert pl.read_csv(out / "metrics.csv")["step"].to_list() == [1, 2, 3]
    assert json.loads((out / "provenance.json").read_text())["layout"] == {"world_size": 2, "dp": 2}
    steps = subprocess.run(
        ["sacct", "-n", "-P", "-j", job, "-o", "jobid,ntasks"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert f"{job}.0|1" in steps and f"{job}.1|2" in steps, steps  # the one-task step, then the 2 training tasks
