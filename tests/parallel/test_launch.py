"""Which launcher a multi-process stage re-runs itself under, and the exact command.

The environment is replaced by a private dict for each test (monkeypatch), and the launch itself
(``run_supervised``) by a recorder: nothing is started here. ``tests/slurm`` runs them for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

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


@pytest.fixture
def squeue(monkeypatch) -> SimpleNamespace:
    """Stands in for squeue: answers ``answer`` (the job's nodes and tasks) and records what was asked."""
    fake = SimpleNamespace(asked=[], answer="2 8")

    def run(cmd, **kwargs):
        fake.asked.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=f"{fake.answer}\n", stderr="")

    monkeypatch.setattr(launch.subprocess, "run", run)
    return fake


ONE_TASK_STEP = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}


@pytest.mark.parametrize(
    "env",
    [
        {"OMP_NUM_THREADS": "8"},  # by hand or Snakemake's local executor
        {"OMP_NUM_THREADS": "8", "SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "1", "SLURM_PROCID": "0"},  # 1-task job
        {"OMP_NUM_THREADS": "8", **ONE_TASK_STEP},  # a Snakemake SLURM job of one task (squeue: 1 node, 1 task)
        {"OMP_NUM_THREADS": "8", "SLURM_JOB_NUM_NODES": "3", "SLURM_NTASKS": "3"},  # left over, outside any job
    ],
)
def test_one_node_relaunches_under_torchrun(monkeypatch, launched, squeue, env: dict) -> None:
    squeue.answer = "1 1"
    assert relaunch(monkeypatch, env, world_size=4) == 0
    [(cmd, child_env)] = launched
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", *MM1[2:]]
    assert child_env["OMP_NUM_THREADS"] == "2"  # the 8 cores shared by 4 processes


SRUN = ["srun", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4", "--distribution=block", "--overlap", "--mem=0"]
SRUN += ["--kill-on-bad-exit=1"]  # --overlap: shares the CPUs, GPUs and memory of the one-task step it is started from
GPU_PER_TASK = ["--gpus-per-task=1", "--gpu-bind=per_task:1"]


def test_several_nodes_relaunch_under_srun_one_task_per_gpu(monkeypatch, launched, squeue) -> None:
    # A Snakemake SLURM job with nodes=2, tasks=8, 4 GPUs per node, cpus_per_task=6: the rule's command
    # runs as a one-task srun step on the first node (snakemake-executor-plugin-slurm-jobstep), which
    # unset the job's SLURM_* variables first: what is left describes that step, not the job.
    step = {**ONE_TASK_STEP, "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_NNODES": "1"}
    step |= {"SLURM_JOB_NODELIST": "gpu1", "SLURM_DISTRIBUTION": "cyclic", "SLURM_GPUS_ON_NODE": "4"}
    job = {"SLURM_CPUS_PER_TASK": "6", "SLURM_CONF": "/etc/x.conf", "PATH": "/usr/bin"}
    assert relaunch(monkeypatch, {**job, **step}, world_size=8) == 0
    assert squeue.asked == [["squeue", "-h", "-j", "4242", "-O", "NumNodes,NumTasks"]]  # the job's shape
    [(cmd, child_env)] = launched
    assert cmd == [*SRUN, "--cpus-per-task=6", *GPU_PER_TASK, *MM1]
    assert child_env["OMP_NUM_THREADS"] == "6" and child_env["PATH"] == "/usr/bin"
    assert {k for k in child_env if k.startswith("SLURM_")} == {"SLURM_JOB_ID", "SLURM_CONF"}  # the job's identity


def test_one_node_with_a_task_per_rank_relaunches_under_srun(monkeypatch, launched, squeue) -> None:
    # a batch script of `sbatch -N1 --ntasks=4 --gpus-per-node=4`: its variables are the job's
    job = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS": "4", "SLURM_GPUS_ON_NODE": "4"}
    assert relaunch(monkeypatch, {**job, "SLURM_CPUS_PER_TASK": "2"}, world_size=4) == 0
    assert squeue.asked == []
    [(cmd, _)] = launched
    one_node = ["srun", "--nodes=1", "--ntasks=4", "--ntasks-per-node=4", *SRUN[4:], "--cpus-per-task=2"]
    assert cmd == [*one_node, *GPU_PER_TASK, *MM1]


def test_a_cpu_job_of_several_nodes_relaunches_under_srun_without_gpus(monkeypatch, launched, squeue) -> None:
    job = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "8", "SLURM_CPUS_PER_TASK": "6"}
    assert relaunch(monkeypatch, {**job, "PATH": "/usr/bin"}, world_size=8) == 0
    assert squeue.asked == []  # a batch script's variables are the job's
    [(cmd, _)] = launched
    assert cmd == [*SRUN, "--cpus-per-task=6", *MM1]


def test_more_ranks_per_node_than_gpus_is_refused(monkeypatch, launched) -> None:
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4"}
    with pytest.raises(ValueError, match=r"puts 8 ranks on each of the 2 nodes .* 4 GPUs per node; .*world_size=8"):
        relaunch(monkeypatch, env, world_size=16)
    assert launched == []


def test_fewer_job_tasks_than_ranks_is_refused(monkeypatch, launched) -> None:
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS": "2"}
    with pytest.raises(ValueError, match=r"world_size=4 but this SLURM job has 2 tasks .*--ntasks=4 or set"):
        relaunch(monkeypatch, env, world_size=4)
    assert launched == []


def test_a_job_shape_squeue_does_not_give_is_one_line(monkeypatch, launched) -> None:
    def run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="slurm_load_jobs error: Invalid job id specified")

    monkeypatch.setattr(launch.subprocess, "run", run)
    with pytest.raises(RuntimeError, match=r"SLURM job 7: .*\(slurm_load_jobs error: Invalid job id specified\)"):
        relaunch(monkeypatch, ONE_TASK_STEP, world_size=4)
    assert launched == []


def test_srun_without_cpus_per_task_shares_the_node(monkeypatch) -> None:
    monkeypatch.setattr(os, "environ", {"SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_CPUS_ON_NODE": "32"})
    cmd, env = launch.srun_command(world_size=4, nodes=2, argv=ARGV)
    assert not any(arg.startswith("--cpus-per-task") for arg in cmd)
    assert env["OMP_NUM_THREADS"] == "16"  # 32 CPUs of the node, 2 tasks on it


def test_world_size_that_does_not_divide_over_the_nodes_is_refused(monkeypatch, launched) -> None:
    with pytest.raises(ValueError, match=r"parallel\.world_size=6 does not divide over the 4 nodes"):
        relaunch(monkeypatch, {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "4"}, world_size=6)
    assert launched == []


class PluginResources(dict):
    """A job's resources as snakemake-executor-plugin-slurm reads them: ``.get(name)`` and ``.name``."""

    __getattr__ = dict.__getitem__


def test_slurm_resources_give_every_node_its_tasks_and_gpus_through_the_snakemake_plugin() -> None:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm_jobstep import get_gpu_setting, get_node_setting

    # mm1.plan.job_resources of a 2-node job of 8 GPUs per node
    planned = {"nodes": 2, "tasks": 16, "tasks_per_node": 8, "gpus_per_node": 8, "cpus_per_task": 8}
    resources = launch.slurm_resources(planned | {"mem_mb": 512_000, "runtime": 2880})
    job = SimpleNamespace(resources=PluginResources(resources), threads=1)
    params = dict(run_uuid="u", slurm_logfile="log", comment_str="rule_train", account="", partition="", workdir="")
    sbatch = (get_submit_command(job, params) + set_gres_string(job)).split()
    for option in ["--nodes=2", "--ntasks=16", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=8"]:
        assert option in sbatch, (option, sbatch)
    assert sbatch[sbatch.index("--mem") + 1] == "512000" and sbatch[sbatch.index("-t") + 1] == "2880"  # per node
    assert not [o for o in sbatch if o.startswith(("--gpus=", "--ntasks-per-gpu", "--gres"))], sbatch
    # the one-task step the rule runs in asks for no GPUs (it gets its node's) and spans what one task can
    assert get_gpu_setting(job) == "" and get_node_setting(job) == "--nodes=2"
