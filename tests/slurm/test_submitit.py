"""Training as a submitit job on the local SLURM cluster: two srun tasks (one node) rendezvous from
SLURM's variables and train; a job requeued mid-training resumes from its checkpoint and ends on
the uninterrupted loss curve, bit for bit."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
import submitit
from slurmkit import sacct_states, wait_for_sacct

from mm1.train.submitit_job import TrainJob
from mm1.train.trainer import TrainResult
from tinykit import tiny

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = 20
LAYOUT = ("parallel.world_size=2", f"train.steps={STEPS}")


def logged_step(out: Path) -> int:
    """The last step DVCLive has logged (0 before the first)."""
    try:
        return json.loads((out / "dvclive" / "metrics.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def submit(tiny_world, folder: Path) -> tuple[submitit.Job, Path]:
    """The tiny 2-process training as a submitit job: one node, 2 tasks of 1 CPU (the whole node)."""
    executor = submitit.AutoExecutor(folder=folder / "submitit", cluster="slurm")
    executor.update_parameters(
        nodes=1, tasks_per_node=2, cpus_per_task=1, mem_gb=4, timeout_min=60, name="mm1-train-test",
        slurm_setup=["export OMP_NUM_THREADS=1"],
    )  # fmt: skip
    out = folder / "run"
    return executor.submit(TrainJob(tiny(*LAYOUT), tiny_world["packed"], tiny_world["tokenizer"], out)), out


def results(job: submitit.Job, timeout: float = 240) -> list[TrainResult]:
    """Both tasks' results; the job is cancelled if it has not ended in time."""
    deadline = time.monotonic() + timeout
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} still {job.state} after {timeout} s:\n{job.stderr()}")
        time.sleep(0.5)
    return job.results()


@pytest.fixture(scope="module")
def uninterrupted(tiny_world, tmp_path_factory) -> tuple[submitit.Job, Path, list[TrainResult]]:
    job, out = submit(tiny_world, tmp_path_factory.mktemp("uninterrupted"))
    try:
        return job, out, results(job)
    except BaseException:
        job.cancel(check=False)  # leave the cluster free for the next test
        raise


def test_two_task_submitit_job_trains(uninterrupted) -> None:
    job, out, (rank0, rank1) = uninterrupted
    assert rank0.metrics["step"].to_list() == list(range(1, STEPS + 1))
    assert rank1.metrics["loss"].to_list() == rank0.metrics["loss"].to_list()  # one run: the loss is all-reduced
    assert rank0.resumed_from == rank1.resumed_from == 0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["layout"] == {"world_size": 2, "dp": 2}
    assert pl.read_csv(out / "metrics.csv")["step"].to_list() == list(range(1, STEPS + 1))
    assert (out / "checkpoint" / "model.json").is_file() and any((out / "checkpoint").glob("*.distcp"))
    assert wait_for_sacct([job.job_id]) == {job.job_id: ["COMPLETED"]}


# How a running job is interrupted: `scontrol requeue` is what a preemption with PreemptMode=REQUEUE
# does (SIGTERM to every task, which finishes its step, saves and exits 75; SLURM runs the same
# submission again, and it resumes); SIGUSR2 is what submitit asks SLURM to send before the time
# limit (TrainJob.checkpoint() hands submitit a resuming copy, which requeues the job with it).
INTERRUPTIONS = {"scontrol-requeue": ["scontrol", "requeue"], "sigusr2": ["scancel", "--signal=USR2"]}


@pytest.mark.parametrize("interruption", INTERRUPTIONS)
def test_interrupted_job_is_requeued_resumes_and_repeats_the_curve(
    tiny_world, tmp_path, uninterrupted, interruption
) -> None:
    job, out = submit(tiny_world, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while logged_step(out) < 3 and time.monotonic() < deadline and not job.done():
            time.sleep(0.05)
        assert 3 <= logged_step(out) < STEPS, f"no step 3 to interrupt:\n{job.stderr()}"
        subprocess.run([*INTERRUPTIONS[interruption], job.job_id], check=True)
        got = results(job)
    except BaseException:
        job.cancel(check=False)
        raise

    want = uninterrupted[2][0].metrics
    for rank in got:
        assert rank.resumed_from > 0  # it did not start over
        assert rank.metrics["step"].to_list() == list(range(1, STEPS + 1))
        for column in ("loss", "lr", "grad_norm"):
            assert rank.metrics[column].to_list() == want[column].to_list(), column  # bit for bit
    step = got[0].resumed_from
    assert json.loads((out / "provenance.json").read_text())["resumed_from"].endswith(f"step_{step:06d}")
    assert job.stdout().count("Starting with JobEnvironment") == 2 * 2  # each task ran, was requeued, ran again
    assert f"| {step}/{STEPS} [00:00<?" in job.stderr()  # the second run's progress bar starts there
    assert wait_for_sacct([job.job_id], duplicates=True) == {job.job_id: ["REQUEUED", "COMPLETED"]}
    assert sacct_states([job.job_id]) == {job.job_id: ["COMPLETED"]}
