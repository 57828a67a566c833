"""A training job that exits 75 (requeue me) is requeued by SLURM as often as it asks, under the
same job id, and completes on the uninterrupted loss curve; the process that exits 75 asks for the
requeue itself (``scontrol requeue``, :func:`mm1.parallel.supervise.requeue_slurm_job`). The job
runs the training as a one-task step, as Snakemake's SLURM jobs run a rule (through Snakemake and
profiles/slurm the same requeues took 76 s instead of 37-50: its status polls back off)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from slurmkit import sbatch, wait_for_sacct

from mm1.parallel.supervise import NO_REQUEUE_ENV
from mm1.train.signals import TEST_SIGNAL_ENV
from tinykit import TINY, train_inputs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = 8
REQUEUES = 3


def test_a_job_that_exits_75_three_times_is_requeued_three_times_and_ends_on_the_curve(tiny_world, tmp_path: Path):
    sets = [a for s in [*TINY, f"train.steps={STEPS}"] for a in ("--set", s)]
    train = [sys.executable, "-m", "mm1.cli", "train", *train_inputs(tiny_world), *sets]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}  # as in the job: the same sums, bit for bit
    whole_log = tmp_path / "whole.log"
    with whole_log.open("w") as sink:  # on the other core while the job runs
        uninterrupted = subprocess.Popen([*train, "--out", str(whole)], stdout=sink, stderr=sink, env=one_thread)

    # Each run of the batch script counts itself; runs 1-3 arm the fault hook, which SIGUSR1s the
    # training inside step 2, 4, 6 (what a preemption or the time-limit watch would do), so it saves
    # that step and exits 75.
    counter = tmp_path / "runs"
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}\n"
        f'if [ "$n" -le {REQUEUES} ]; then export {TEST_SIGNAL_ENV}=step:$((2 * n)):SIGUSR1:0:self; fi\n'
        f"export OMP_NUM_THREADS=1\nunset {NO_REQUEUE_ENV}\nsrun -n1 {shlex.join([*train, '--out', str(parts)])}\n"
    )
    log = tmp_path / "job.log"
    try:
        job = sbatch(
            "--requeue", "--ntasks=1", "--cpus-per-task=1", "--open-mode=append", f"--output={log}", str(script)
        )
        assert uninterrupted.wait(timeout=300) == 0, whole_log.read_text()[-3000:]
    finally:
        uninterrupted.kill()  # a no-op once it has ended

    states = wait_for_sacct([job], duplicates=True)
    assert states == {job: ["REQUEUED"] * REQUEUES + ["COMPLETED"]}, log.read_text()[-4000:]
    assert counter.read_text().strip() == str(REQUEUES + 1)
    assert log.read_text().count(f"SLURM job {job} requeued") == REQUEUES
    got, want = pl.read_csv(parts / "metrics.csv"), pl.read_csv(whole / "metrics.csv")
    assert got["step"].to_list() == list(range(1, STEPS + 1))
    for column in ("loss", "lr", "grad_norm"):
        assert got[column].to_list() == want[column].to_list(), column  # bit for bit
