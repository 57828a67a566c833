"""Start a stage with as many processes as its parallel layout needs.

A stage command run by hand, by Snakemake or by DVC is a single process. When
``parallel.world_size > 1`` and no launcher (torchrun, srun) has set ``WORLD_SIZE``, the command
re-runs itself under ``torch.distributed.run`` on this node; under a launcher it runs as is.
"""

from __future__ import annotations

import os
import sys

from mm1.config import ParallelConfig


def under_launcher() -> bool:
    return "WORLD_SIZE" in os.environ


def relaunch_if_needed(parallel: ParallelConfig, argv: list[str]) -> int | None:
    """Return the exit code of a torchrun re-launch, or None when this process should do the work."""
    if parallel.world_size == 1 or under_launcher():
        return None
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={parallel.world_size}",
        "-m",
        "mm1.cli",
        *argv,
    ]
    cores = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // parallel.world_size))}  # share the cores
    from mm1.train.preempt import run_supervised  # waits through preemption signals; returns 75 to requeue

    return run_supervised(cmd, env)
