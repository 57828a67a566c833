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
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REQUEUE_EXIT = 75  # EX_TEMPFAIL (sysexits.h): "try again later"; 124 is timeout's, 137 a SIGKILL
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)  # preemption: save, then exit REQUEUE_EXIT
EXIT_STATUS_ENV = "MM1_EXIT_STATUS"  # set by run_supervised: where rank 0 writes 0 or REQUEUE_EXIT
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"  # torchrun passes these on
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
