"""Start a stage with as many processes as its parallel layout needs.

A stage command run by hand, by Snakemake or by DVC is a single process. When
``parallel.world_size > 1`` and no launcher has started it (torchrun sets ``WORLD_SIZE``; ``srun``
with several tasks sets ``SLURM_STEP_NUM_TASKS``), the command re-runs itself:

- inside a SLURM allocation of several nodes (``SLURM_JOB_NUM_NODES > 1``, e.g. a Snakemake SLURM
  job with ``nodes=N``): under ``srun``, ``world_size / N`` tasks per node (:func:`srun_command`);
- otherwise under ``torch.distributed.run`` on this node (:func:`torchrun_command`).

Under a launcher it runs as is, and under ``srun`` the rendezvous comes from SLURM's variables
(:func:`torch_env_from_slurm`, called by :func:`mm1.parallel.setup.initialize`).
"""

from __future__ import annotations

import contextlib
import os
import re
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
    a MASTER_PORT derived from the job id. Variables already set (e.g. by submitit) win."""
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


def _slurm_nodes() -> int:
    """Nodes of the SLURM allocation this process runs in; 1 outside one."""
    return int(os.environ.get("SLURM_JOB_NUM_NODES", "1")) if "SLURM_JOB_ID" in os.environ else 1


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
    """``srun`` of ``mm1 <argv>`` as ``world_size`` tasks over the allocation's ``nodes`` nodes.

    Snakemake's SLURM jobs run their command as a one-task ``srun`` step that holds the job's CPUs
    and memory: ``--overlap`` (CPUs, GPUs) and ``--mem=0`` (all of the job's memory, not reserved)
    let this step share them, and the explicit counts override the SLURM_* variables srun would
    otherwise read from that step. Each task gets the job's ``--cpus-per-task`` (srun no longer
    inherits it) and as many OpenMP threads.
    """
    if world_size % nodes:
        raise ValueError(
            f"parallel.world_size={world_size} does not divide over the {nodes} nodes of this SLURM job; "
            f"set parallel.world_size to a multiple of {nodes} or ask for a node count that divides it"
        )
    per_node = world_size // nodes
    cmd = ["srun", f"--nodes={nodes}", f"--ntasks={world_size}", f"--ntasks-per-node={per_node}"]
    cmd += ["--overlap", "--mem=0", "--kill-on-bad-exit=1"]
    if cpus := os.environ.get("SLURM_CPUS_PER_TASK"):
        cmd.append(f"--cpus-per-task={cpus}")
    else:
        cpus = str(max(1, int(os.environ.get("SLURM_CPUS_ON_NODE", os.cpu_count() or 1)) // per_node))
    cmd += [sys.executable, "-m", "mm1.cli", *argv]
    return cmd, {**os.environ, "OMP_NUM_THREADS": cpus}


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
    nodes = _slurm_nodes()
    if nodes > 1:
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
