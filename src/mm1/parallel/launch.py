"""Start a stage with as many processes as its parallel layout needs.

A stage command run by hand, by Snakemake or by DVC is a single process. When
``parallel.world_size > 1`` and no launcher has started it (torchrun sets ``WORLD_SIZE``; ``srun``
with several tasks sets ``SLURM_STEP_NUM_TASKS``), the command re-runs itself:

- inside a SLURM job with a task per rank or several nodes (:func:`slurm_job_shape`, e.g. a
  Snakemake SLURM training job on GPUs, :func:`slurm_resources`): under ``srun``, ``world_size / N``
  tasks on each of its N nodes, one GPU bound to each (:func:`srun_command`);
- otherwise (a one-task job, or no job) under ``torch.distributed.run`` on this node
  (:func:`torchrun_command`).

Under a launcher it runs as is, and under ``srun`` the rendezvous comes from SLURM's variables
(:func:`torch_env_from_slurm`, called by :func:`mm1.parallel.setup.initialize`).
:func:`slurm_resources` is the other half: the Snakemake SLURM resources of a training job, so
that the job the workflow submits has the nodes, tasks, GPUs and CPUs this launch expects.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from mm1 import outlock
from mm1.config import ParallelConfig
from mm1.parallel.supervise import REQUEUE_EXIT, failure_message, requeue_slurm_job, run_supervised


def _slurm_tasks() -> int:
    """Tasks of this ``srun`` step; 1 outside one. A batch script also sees SLURM_NTASKS (the
    job's) and SLURM_PROCID=0 but is one process, so only srun's SLURM_STEP_NUM_TASKS counts."""
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) if "SLURM_PROCID" in os.environ else 1


def under_launcher() -> bool:
    """Started by torchrun (WORLD_SIZE set) or as one of several ``srun`` tasks."""
    return "WORLD_SIZE" in os.environ or _slurm_tasks() > 1


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[03-05,9],cpu1`` -> ``gpu03``."""
    prefix, first = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist).groups()
    return prefix + (first or "")


def torch_env_from_slurm() -> None:
    """Under ``srun`` with several tasks (one per GPU), give torch.distributed its rendezvous
    variables from SLURM's: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR (the step's first node) and
    a MASTER_PORT derived from the job id. Variables already set (e.g. by submitit) win. Each task
    prints one line: its rank, host and GPUs (what SLURM bound to it), for the job's log."""
    if "RANK" in os.environ or _slurm_tasks() == 1:
        return
    job = int(os.environ.get("SLURM_JOB_ID", "0"))
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
    defaults = {
        "RANK": os.environ["SLURM_PROCID"],
        "WORLD_SIZE": str(_slurm_tasks()),
        "LOCAL_RANK": os.environ.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": first_host(nodes),
        "MASTER_PORT": str(20000 + job % 20000),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    env = os.environ
    gpus = env.get("CUDA_VISIBLE_DEVICES", "")
    where = f"{socket.gethostname()} (local rank {env['LOCAL_RANK']}, CUDA_VISIBLE_DEVICES={gpus})"
    print(f"mm1: rank {env['RANK']} of {env['WORLD_SIZE']} on {where}", file=sys.stderr, flush=True)


# What a step started from inside a job step keeps of its environment: the job's identity. The rest
# describes the step it is started from (Snakemake's one-task step on the first node: its node list,
# task count, distribution, GPUs); srun would read those as options and place every task there.
JOB_VARIABLES = (  # as snakemake-executor-plugin-slurm-jobstep keeps them for its step, and SLURM_CONF
    "SLURM_JOB_ID",
    "SLURM_JOBID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_CLUSTER_NAME",
    "SLURM_SUBMIT_DIR",
    "SLURM_SUBMIT_HOST",
    "SLURM_CONF",
)


def slurm_job_shape() -> tuple[int, int]:
    """(nodes, tasks) of the SLURM job this process runs in; (1, 1) outside one.

    A batch script's ``SLURM_JOB_NUM_NODES`` and ``SLURM_NTASKS`` are the job's. Inside a job step
    (``SLURM_STEP_ID``) ``SLURM_NTASKS`` is the step's, and snakemake-executor-plugin-slurm runs a
    rule as a one-task step on the job's first node after unsetting the job's ``SLURM_*`` variables
    (``SLURM_JOB_NODELIST`` then names that one node): there the controller is asked (``squeue``).
    """
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        return 1, 1
    if "SLURM_STEP_ID" not in os.environ:
        return int(os.environ.get("SLURM_JOB_NUM_NODES", "1")), int(os.environ.get("SLURM_NTASKS", "1"))
    cmd = ["squeue", "-h", "-j", job, "-O", "NumNodes,NumTasks"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        answer = str(exc)
    else:
        shape = proc.stdout.split()
        if proc.returncode == 0 and len(shape) == 2 and all(n.isdigit() for n in shape):
            return int(shape[0]), int(shape[1])
        answer = proc.stderr.strip() or f"exit {proc.returncode}, output {proc.stdout.strip()!r}"
    raise RuntimeError(
        f"SLURM job {job}: `{' '.join(cmd)}` did not give the job's nodes and tasks ({answer}); "
        "run the stage command in the job's batch script or with squeue on PATH"
    )


def torchrun_command(world_size: int, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """``python -m torch.distributed.run`` of ``mm1 <argv>`` with ``world_size`` processes on this node."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={world_size}",
        "-m",
        "mm1.cli",
        *argv,
    ]
    cores = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    return cmd, {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // world_size))}  # share the cores


def srun_command(world_size: int, nodes: int, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """``srun`` of ``mm1 <argv>`` as ``world_size`` tasks over the job's ``nodes`` nodes.

    Ranks fill the nodes in order (``--distribution=block``: ranks 0..k-1 on the first node, so a
    tensor-parallel group stays inside a node). Where the step this runs in has GPUs
    (``SLURM_GPUS_ON_NODE``: a step gets all of its job's GPUs on its node unless it asks), each task
    gets one of its node's GPUs and sees only that one (``--gpus-per-task=1``,
    ``--gpu-bind=per_task:1``: ``CUDA_VISIBLE_DEVICES`` per task).

    Snakemake's SLURM jobs run their command as a one-task ``srun`` step that holds the job's CPUs,
    GPUs and memory on the first node: ``--overlap`` lets this step share them and ``--mem=0`` gives
    it all of the job's memory, not reserved. The step's ``SLURM_*`` variables are removed
    (:data:`JOB_VARIABLES` stay), so that srun places the tasks on the whole job, not that step.
    Each task gets the job's ``--cpus-per-task`` (srun no longer inherits it) and as many OpenMP
    threads.
    """
    if world_size % nodes:
        raise ValueError(
            f"parallel.world_size={world_size} does not divide over the {nodes} nodes of this SLURM job; "
            f"set parallel.world_size to a multiple of {nodes} or ask for a node count that divides it"
        )
    per_node = world_size // nodes
    cmd = ["srun", f"--nodes={nodes}", f"--ntasks={world_size}", f"--ntasks-per-node={per_node}"]
    cmd += ["--distribution=block", "--overlap", "--mem=0", "--kill-on-bad-exit=1"]
    if cpus := os.environ.get("SLURM_CPUS_PER_TASK"):
        cmd.append(f"--cpus-per-task={cpus}")
    else:
        cpus = str(max(1, int(os.environ.get("SLURM_CPUS_ON_NODE", os.cpu_count() or 1)) // per_node))
    if gpus := int(os.environ.get("SLURM_GPUS_ON_NODE", "0")):
        if per_node > gpus:
            raise ValueError(
                f"parallel.world_size={world_size} puts {per_node} ranks on each of the {nodes} nodes of this SLURM "
                f"job, which has {gpus} GPUs per node; one rank per GPU: set parallel.world_size={nodes * gpus} "
                f"or ask for {per_node} GPUs per node"
            )
        cmd += ["--gpus-per-task=1", "--gpu-bind=per_task:1"]
    cmd += [sys.executable, "-m", "mm1.cli", *argv]
    env = {
        k: v for k, v in os.environ.items() if k in JOB_VARIABLES or not k.startswith(("SLURM_", "SRUN_", "SBATCH_"))
    }
    return cmd, {**env, "OMP_NUM_THREADS": cpus}


def slurm_resources(planned: dict[str, int]) -> dict[str, int | str]:
    """The snakemake-executor-plugin-slurm resources of a job the planner sized
    (:func:`mm1.plan.job_resources`, :func:`mm1.plan.infer.inference_resources`), as sbatch
    options: ``nodes`` (``--nodes``), ``tasks`` (``--ntasks``), ``cpus_per_task``
    (``--cpus-per-task``), ``mem_mb`` (``--mem``, per node), ``runtime`` (``--time``) and
    ``slurm_extra`` with ``--ntasks-per-node`` and ``--gpus-per-node``: every node its tasks and
    its GPUs, one task per GPU.

    No ``gpu`` resource: the plugin would submit ``--gpus=<all> --ntasks-per-gpu=1``, which leaves
    the GPUs per node to SLURM, and run the rule's one-task step with ``--gpus=<all>`` (which
    cannot fit on one node). Without it that step gets its node's GPUs (a step gets all of its
    job's GPUs on its nodes unless it asks), and :func:`srun_command` binds one to each rank.
    """
    return {
        "nodes": planned["nodes"],
        "tasks": planned["tasks"],
        "cpus_per_task": planned["cpus_per_task"],
        "mem_mb": planned["mem_mb"],
        "runtime": planned["runtime"],
        "slurm_extra": f"--ntasks-per-node={planned['tasks_per_node']} --gpus-per-node={planned['gpus_per_node']}",
    }


def relaunch_if_needed(
    parallel: ParallelConfig, argv: list[str], out: Path | None = None, resume: Path | None = None
) -> int | None:
    """Return the exit code of a torchrun or srun re-launch, or None when this process should do the work.

    The re-launching process holds the lock of the stage's ``out`` folder (:mod:`mm1.outlock`) for
    the whole job, and tells its ranks so (they take none): a second run on that folder fails at
    once. It waits through preemption signals (:func:`~mm1.parallel.supervise.run_supervised`:
    75 asks for a requeue, which it passes to SLURM inside a batch job,
    :func:`~mm1.parallel.supervise.requeue_slurm_job`); on a failure it names the stage's ``resume``
    folder's newest checkpoint.
    """
    if parallel.world_size == 1 or under_launcher():
        return None
    nodes, tasks = slurm_job_shape()
    if 1 < tasks < parallel.world_size:
        raise ValueError(
            f"parallel.world_size={parallel.world_size} but this SLURM job has {tasks} tasks (one per rank): "
            f"submit it with --ntasks={parallel.world_size} or set parallel.world_size={tasks}"
        )
    if nodes > 1 or tasks > 1:  # a task per rank: srun starts them, each on its CPUs and its GPU
        cmd, env = srun_command(parallel.world_size, nodes, argv)
    else:
        cmd, env = torchrun_command(parallel.world_size, argv)
    with outlock.hold(out) if out else contextlib.nullcontext():
        if out:  # held here (now, or already by this process): the ranks take none
            env[outlock.HELD_ENV] = str(outlock.lock_path(out))
        code = run_supervised(cmd, env)
    if code == REQUEUE_EXIT:  # the lock is released: the requeued run may take it at once
        requeue_slurm_job()
    elif code != 0:
        print(failure_message(code, resume), file=sys.stderr, flush=True)
    return code
