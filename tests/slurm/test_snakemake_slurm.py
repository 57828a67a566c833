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
    "--config",
    "gpu=none",  # the profile sizes training jobs for its GPU type; this node has 2 CPUs
    "--configfile",
    "tests/workflow/smoke.yaml",
]
# On top of the smoke config: a few steps per training stage (the test is about scheduling, and
# tests/workflow runs the same DAG at the smoke config's length).
FAST = (
    "train: {steps: 6, warmup_steps: 1}\n"
    "study: {seeds: 1, common: {train.steps: 6, train.warmup_steps: 1}}\n"  # one run per cell, as short
)


def test_a_figure_target_runs_as_slurm_jobs(tmp_path: Path) -> None:
    """`snakemake fig5d` on SLURM: the ablation baseline and its no-synthetic-captions cell, then the figure."""
    project = workflow.copy_project(tmp_path / "mm1")
    (project / "fast.yaml").write_text(FAST)
    cmd = ["snakemake", "fig5d", *SNAKEMAKE_SLURM[1:], "fast.yaml"]  # --configfile takes the files after it
    proc = workflow.run(cmd, project, timeout=900)
    log = proc.stdout + proc.stderr
    # "Job 5 has been submitted with SLURM jobid 18 (log: .../slurm_logs/rule_world/base/18.log)."
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/", log)
    rules = [rule for _, rule in submitted]
    assert {"world", "tokenizer", "llm", "encoder", "pack", "train", "eval", "compare"} <= set(rules), log[-4000:]
    assert rules.count("train") == rules.count("eval") == 2 and rules.count("encoder") == 1, rules
    job_ids = [job for job, _ in submitted]
    states = wait_for_sacct(job_ids)
    assert states == {job: ["COMPLETED"] for job in job_ids}, states
    for name in ("fig5d.png", "fig5d.csv"):
        assert (project / "results" / "figures" / name).stat().st_size > 0, name
    again = workflow.run([*cmd, "-n"], project)
    assert "Nothing to be done" in again.stdout + again.stderr
