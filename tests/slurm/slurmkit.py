"""Helpers the SLURM tests share: accounting queries, submitit jobs that are always cleaned up, and
the other test folders' helpers, reused.

Tests import these from here (``from slurmkit import ...``), not from conftest: when pytest collects
several test folders, ``import conftest`` may find another folder's conftest.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

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


def sbatch(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    """Submit a batch job and wait until it has ended (polling squeue: `sbatch --wait` checks only
    every ~30 s); return its id. ``env``: the clients' environment (another cluster's SLURM_CONF)."""
    job = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True, env=env).stdout
    job = job.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, env=env).stdout.strip():
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job], env=env)
            raise TimeoutError(f"job {job} still queued or running after {timeout} s; cancelled")
        time.sleep(0.2)
    return job


# -- what snakemake-executor-plugin-slurm submits ---------------------------------------------------
class PluginResources(dict):
    """A job's resources as the plugin reads them: ``.get(name)`` and ``.name``."""

    __getattr__ = dict.__getitem__


def plugin_sbatch(resources: dict, log: Path, workdir: Path) -> list[str]:
    """The sbatch options the plugin submits a job of ``resources`` with, as profiles/slurm asks
    (``--requeue``), from its own code; its ``--wrap`` (the job's command) left out."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(resources=PluginResources(resources), threads=1)
    params = dict(
        run_uuid="mm1", slurm_logfile=log, comment_str="rule_train", account="", partition="", workdir=workdir
    )
    settings = SimpleNamespace(requeue=True, no_requeue=False, qos=None, reservation=None)
    return shlex.split(get_submit_command(job, params, settings=settings) + set_gres_string(job))[1:]


# The batch job's variables the jobstep plugin keeps for its step (the rest it unsets; SLURM_CONF
# kept too here: on a real cluster the clients find /etc/slurm/slurm.conf, here another cluster's).
PLUGIN_KEEPS = "SLURM_JOB_ID SLURM_JOBID SLURM_CLUSTER_NAME SLURM_SUBMIT_DIR SLURM_SUBMIT_HOST SLURM_CONF"


def plugin_step(resources: dict) -> str:
    """Bash lines that run a command as snakemake-executor-plugin-slurm-jobstep runs a rule's in its
    batch job: the job's SLURM_* variables unset, then a one-task ``srun`` step; append the command."""
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting

    job = SimpleNamespace(resources=PluginResources(resources), threads=1)
    unset = (
        f'for v in $(compgen -e); do case "$v" in SLURM_*|SRUN_*|SBATCH_*) '
        f'[[ " {PLUGIN_KEEPS} " == *" $v "* ]] || unset "$v";; esac; done'
    )
    step = ["srun", "-n1", "--cpu-bind=q", get_cpu_setting(job, False), get_gpu_setting(job), get_node_setting(job)]
    return unset + "\n" + " ".join(o for o in step if o) + " "
