"""Launcher supervision: run torchrun (or srun) to the end through preemption signals, and return
the training's exit status.

SLURM sends SIGTERM when it preempts or cancels a job (and ``--signal=USR1@120`` style warnings
before the time limit); submitit asks for SIGUSR2. The signals reach every process of the job:

    launcher   (this module) waits through them, like a shell waiting for its foreground job
    torchrun   passes them on to its workers (``PET_SIGNALS_TO_HANDLE``)
    workers    note them, save after the step and exit ``REQUEUE_EXIT`` (:mod:`mm1.train.signals`);
               rank 0 first writes that status to the file named by ``MM1_EXIT_STATUS``

torchrun reports any worker exit or its own signal as 1, so the status rank 0 left wins: 75
(requeue me) or 0 (training had finished anyway). This module knows nothing of training: it reads a
resume folder only through its ``latest`` pointer, and imports nothing of :mod:`mm1.train`.

Inside a SLURM batch job the process that ends with 75 (the launcher, or a one-process training)
asks SLURM to requeue its own job (:func:`requeue_slurm_job`): the same job id goes back to the
queue, runs the same command again and resumes, as often as it takes; Snakemake's SLURM executor
sees a job that is pending or running again, not a failure, so its ``retries`` stay for real
failures. A job submitted with ``--no-requeue`` (or by submitit, which requeues its jobs itself) is
left alone and ends with 75. The time limit is watched from inside the training
(``train.stop_minutes_before_limit``, :func:`job_end_time`), not by a SLURM ``--signal``: Snakemake's
SLURM jobs run a rule as ``sh`` -> snakemake -> ``srun`` -> snakemake -> ``bash`` -> mm1, and the signal
goes either to the batch shell alone (``B:``), which it ends, or to every process of every step,
where the default action of SIGUSR1 ends snakemake and bash and with them the step (docs/slurm.md).
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REQUEUE_EXIT = 75  # EX_TEMPFAIL (sysexits.h): "try again later"; 124 is timeout's, 137 a SIGKILL
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)  # preemption: save, then exit REQUEUE_EXIT
EXIT_STATUS_ENV = "MM1_EXIT_STATUS"  # set by run_supervised: where rank 0 writes 0 or REQUEUE_EXIT
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"  # torchrun passes these on
NO_REQUEUE_ENV = "MM1_NO_REQUEUE"  # "1": a run that exits 75 inside a SLURM job does not requeue it
LATEST = "latest"  # in a resume folder: the name of its newest complete checkpoint (mm1.train.state uses it)


def run_supervised(cmd: list[str], env: dict[str, str]) -> int:
    """Run a launcher (torchrun, srun) to the end and return the training's exit status.

    This process outlives the preemption signals (sent to the whole process group, they reach
    torchrun directly). A status rank 0 reported wins over the launcher's exit code; a job signalled
    before rank 0 could report asks for a requeue too (nothing new was saved, and a requeue resumes
    from the newest complete checkpoint). Any other failure returns the launcher's code.
    """
    with tempfile.TemporaryDirectory(prefix="mm1-") as tmp:
        status = Path(tmp) / "exit_status"
        env = {**env, EXIT_STATUS_ENV: str(status), "PET_SIGNALS_TO_HANDLE": TORCHRUN_SIGNALS}
        received: list[int] = []
        previous = {sig: signal.signal(sig, lambda n, _: received.append(n)) for sig in (*SIGNALS, signal.SIGINT)}
        try:
            code = subprocess.Popen(cmd, env=env).wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if code != 0 and status.is_file():
            return int(status.read_text())
    if code != 0 and any(sig in SIGNALS for sig in received):
        print(
            f"mm1: preempted ({signal.Signals(received[0]).name}) before training could save; requeue", file=sys.stderr
        )
        return REQUEUE_EXIT
    return code


def failure_message(code: int, resume: Path | None = None) -> str:
    """One line for a launcher that failed without a status from rank 0: a rank raised an error or
    died (torchrun's report above names the rank and its exit code), and, given the stage's
    ``resume`` folder, where training resumes."""
    where = ""
    if resume is not None and Path(resume).is_dir():
        pointer = Path(resume) / LATEST
        newest = Path(resume) / pointer.read_text().strip() if pointer.is_file() else None
        if newest is not None and newest.is_dir():
            where = f"; the next run resumes from {newest}"
        else:
            where = "; no complete checkpoint: the next run starts over"
    return (
        f"mm1: a training process failed or died (launcher exit {code}; see its report above for the rank: "
        f"exitcode -9 is a SIGKILL, usually the kernel's OOM killer){where}"
    )


def job_end_time() -> float | None:
    """When this SLURM job's time limit ends, in seconds since the epoch: ``SLURM_JOB_END_TIME``
    (SLURM 23.02+) or squeue's end time for the job; None outside SLURM or without a limit."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    end = os.environ.get("SLURM_JOB_END_TIME")
    if end is None:  # SLURM 22.05 sets none: ask squeue (it prints local time, as fromisoformat reads it)
        try:
            proc = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True, timeout=60)
            end = str(datetime.datetime.fromisoformat(proc.stdout.strip()).timestamp())
        except (OSError, subprocess.TimeoutExpired, ValueError):  # no squeue, "N/A", "NONE" (no limit)
            return None
    try:
        return float(end) if float(end) > 0 else None
    except ValueError:
        return None


def requeue_slurm_job() -> bool:
    """Ask SLURM to requeue the batch job this process runs in (``scontrol requeue``); True if it
    will run again. Nothing outside SLURM, under submitit (its handler requeues) or when
    ``MM1_NO_REQUEUE=1``; a refusal (``--no-requeue``, not a batch job, already requeued by SLURM
    itself) is printed in one line and the process still exits 75."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or "SUBMITIT_EXECUTOR" in os.environ or os.environ.get(NO_REQUEUE_ENV) == "1":
        return False
    try:
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"mm1: exit {REQUEUE_EXIT}: could not ask SLURM to requeue job {job}: {exc}", file=sys.stderr, flush=True)
        return False
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"scontrol exit {proc.returncode}"]
        print(f"mm1: exit {REQUEUE_EXIT}: SLURM did not requeue job {job}: {why[0]}", file=sys.stderr, flush=True)
        return False
    print(f"mm1: saved; SLURM job {job} requeued: it resumes from its checkpoint", file=sys.stderr, flush=True)
    return True
