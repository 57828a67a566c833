"""The miniature DAG on the local SLURM cluster: every job an sbatch job of Snakemake's SLURM executor
with the cluster settings of profiles/slurm."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from slurmkit import wait_for_sacct, workflow

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SNAKEMAKE_SLURM = [
    "snakemake",
    "--executor",
    "slurm",
    "--workflow-profile",
    "profiles/slurm",
    "--slurm-init-seconds-before-status-checks",
    "2",  # the profile's 40 s suits a busy cluster; here the first poll would wait out most jobs
    "--cores",
    "2",  # rules with `threads: workflow.cores` need a number
    "--configfile",
    "tests/workflow/smoke.yaml",
    "--config",
    "gpu=none",  # the profile sizes training jobs for its GPU type; this node has 2 CPUs
]


def test_default_target_runs_as_slurm_jobs(tmp_path: Path) -> None:
    project = workflow.copy_project(tmp_path / "mm1")
    proc = workflow.run(SNAKEMAKE_SLURM, project, timeout=900)
    log = proc.stdout + proc.stderr
    # "Job 5 has been submitted with SLURM jobid 18 (log: .../slurm_logs/rule_world/base/18.log)."
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/", log)
    rules = {rule for _, rule in submitted}
    assert {"world", "tokenizer", "pack", "train", "eval", "figure"} <= rules, log[-4000:]
    job_ids = [job for job, _ in submitted]
    states = wait_for_sacct(job_ids)
    assert states == {job: ["COMPLETED"] for job in job_ids}, states
    for name in ("tiny_study.png", "tiny_study.csv"):
        assert (project / "results" / "figures" / name).stat().st_size > 0, name
    again = workflow.run([*SNAKEMAKE_SLURM, "-n"], project)
    assert "Nothing to be done" in again.stdout + again.stderr
