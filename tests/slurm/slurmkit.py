"""Helpers the SLURM tests share: accounting queries, submitit jobs that are always cleaned up, and
the other test folders' helpers, reused.

Tests import these from here (``from slurmkit import ...``), not from conftest: when pytest collects
several test folders, ``import conftest`` may find another folder's conftest.
"""

from __future__ import annotations

import subprocess
import time

from tinykit import TESTS, load_conftest

workflow = load_conftest(TESTS / "workflow")  # copy_project, run, SMOKE


def sacct_states(job_ids: list[str], *, duplicates: bool = False) -> dict[str, list[str]]:
    """Job id -> its states in accounting, oldest first (``duplicates``: each run of a requeued job)."""
    cmd = ["sacct", "-n", "-X", "-P", "-o", "jobid,state", "-j", ",".join(job_ids)] + (["-D"] if duplicates else [])
    states: dict[str, list[str]] = {}
    for line in subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines():
        job, state = line.split("|")
        states.setdefault(job, []).append(state.split()[0])  # "CANCELLED by 0" -> CANCELLED
    return states


def wait_for_sacct(job_ids: list[str], *, duplicates: bool = False, timeout: float = 30) -> dict[str, list[str]]:
    """Accounting lags a job's end by a second or so: poll until every job's last state is COMPLETED."""
    deadline = time.monotonic() + timeout
    while True:
        states = sacct_states(job_ids, duplicates=duplicates)
        if all(states.get(j, [""])[-1] == "COMPLETED" for j in job_ids) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def sbatch(*args: str, timeout: float = 300) -> str:
    """Submit a batch job and wait until it has ended (polling squeue: `sbatch --wait` checks only
    every ~30 s); return its id."""
    job = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True).stdout
    job = job.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job])
            raise TimeoutError(f"job {job} still queued or running after {timeout} s; cancelled")
        time.sleep(0.2)
    return job
