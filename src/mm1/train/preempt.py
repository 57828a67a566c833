"""Preemption: on SIGTERM/SIGUSR1/SIGUSR2 finish the step, save, and exit with ``REQUEUE_EXIT``.

SLURM sends SIGTERM when it preempts or cancels a job (and ``--signal=USR1@120`` style warnings
before the time limit); submitit asks for SIGUSR2. The signal flow:

    signal ──> every training process (a process group, or all tasks of a SLURM step)
               under torchrun: the agent gets it and passes it on to its workers
    worker ──> :class:`StopSignals` notes it; the trainer all-reduces the flag after each step, so
               every rank stops after the same step, saves a resumable checkpoint, and raises
               :class:`Preempted` (a ``SystemExit`` with code ``REQUEUE_EXIT`` = 75, EX_TEMPFAIL)
    launcher   torchrun reports any worker exit or its own signal as 1; :func:`run_supervised`
               waits through the signal and returns the status rank 0 left in ``MM1_EXIT_STATUS``
               (75: requeue; 0: training had finished anyway)

A requeued job (SLURM ``--requeue``, submitit's :class:`TrainJob`, a Snakemake retry) runs the same
command again and resumes from the checkpoint (``train.resume``). SIGINT (Ctrl-C) still stops at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

REQUEUE_EXIT = 75  # EX_TEMPFAIL (sysexits.h): "try again later"; 124 is timeout's, 137 a SIGKILL
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
EXIT_STATUS_ENV = "MM1_EXIT_STATUS"  # set by run_supervised: where rank 0 writes 0 or REQUEUE_EXIT
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"  # torchrun passes these on


TEST_SIGNAL_ENV = "MM1_TEST_SIGNAL_AT"  # a fault-test hook: SignalAt.from_env
POINTS = ("start", "step", "save")


@dataclass(frozen=True)
class SignalAt:
    """A fault-test hook: raise a preemption signal from a named point of training, so that a test's
    verdict never depends on when a signal sent from outside happens to land.

    ``MM1_TEST_SIGNAL_AT=POINT:STEP:SIGNAL[:RANK[:TARGET]]``, e.g. ``step:7:SIGTERM``. POINT is
    ``start`` (entering :func:`~mm1.train.trainer.train`, before the handlers are installed; STEP is
    ignored), ``step`` (inside step STEP, between its backward pass and its optimizer step) or
    ``save`` (as the save after step STEP begins). RANK (default 0) raises it; TARGET ``group``
    (default) sends it to the launch's process group as SLURM would -- torchrun passes it on to the
    ranks -- and to this process at once; ``self`` to this process alone.
    """

    point: str
    step: int
    signum: int
    rank: int = 0
    target: str = "group"

    @classmethod
    def from_env(cls) -> SignalAt | None:
        spec = os.environ.get(TEST_SIGNAL_ENV)
        if not spec:
            return None
        parts = spec.split(":")
        try:
            point, step, name, rank, target = (parts + ["0", "group"][len(parts) - 3 :])[:5]
            hook = cls(point, int(step), signal.Signals[name].value, int(rank), target)
        except (ValueError, KeyError):
            hook = None
        if len(parts) not in (3, 4, 5) or hook is None or point not in POINTS or target not in ("group", "self"):
            raise ValueError(
                f"{TEST_SIGNAL_ENV}={spec!r}: expected POINT:STEP:SIGNAL[:RANK[:group|self]] with POINT one of "
                f"{', '.join(POINTS)}, e.g. step:7:SIGTERM"
            )
        return hook

    def __call__(self, point: str, step: int, rank: int) -> None:
        """Raise the signal if this is the point, the step (any, for ``start``) and the rank."""
        if point != self.point or rank != self.rank or (point != "start" and step != self.step):
            return
        if self.target == "group":
            # under torchrun this process leads a session of its own: the launch's group is its parent's
            os.killpg(os.getpgid(os.getppid()) if "TORCHELASTIC_RUN_ID" in os.environ else 0, self.signum)
        os.kill(os.getpid(), self.signum)  # to this process at once: the step in progress notes it


def signal_hook() -> SignalAt | Callable[[str, int, int], None]:
    """The fault-test hook of this process (:class:`SignalAt`), or one that does nothing."""
    return SignalAt.from_env() or (lambda point, step, rank: None)


class Preempted(SystemExit):
    """Training stopped early after a saved ``step``; the process exits with ``REQUEUE_EXIT``."""

    def __init__(self, step: int) -> None:
        super().__init__(REQUEUE_EXIT)
        self.step = step


class StopSignals:
    """``with StopSignals() as stop:`` notes the preemption signals instead of dying from them.

    :meth:`agreed` (every rank, after each step) tells whether any rank got one. On exit the
    previous handlers come back; :meth:`hand_over` then calls the one the signal would have reached
    (submitit's checkpoint-and-requeue, for one).
    """

    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal noted
        self.received: list[int] = []  # every distinct signal noted, in order
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._note) for sig in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _note(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
        if signum not in self.received:
            self.received.append(signum)

    def agreed(self) -> bool:
        """True on every rank when any rank got a signal (a collective: all ranks call it each step)."""
        import torch  # here: the launcher process (run_supervised) does not need torch

        flag = torch.tensor([float(self.signum is not None)])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def hand_over(self) -> None:
        """Call the handler each noted signal had before (if it was a Python function), in the order
        they came: submitit sends SIGTERM and SIGUSR2 together and only its USR2 handler requeues."""
        for signum in self.received:
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, None)


def report_exit(code: int, rank: int) -> None:
    """Leave this run's exit status for :func:`run_supervised` (rank 0, under it only)."""
    path = os.environ.get(EXIT_STATUS_ENV)
    if path and rank == 0:
        Path(path).write_text(f"{code}\n")


def run_supervised(cmd: list[str], env: dict[str, str]) -> int:
    """Run a launcher (torchrun) to the end and return the training's exit status.

    Like a shell waiting for its foreground job, this process outlives the preemption signals (sent
    to the whole process group, they reach torchrun directly). torchrun exits 1 when a worker exits
    with ``REQUEUE_EXIT`` or when it was signalled itself, so the status rank 0 reported wins.
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
        # preempted before rank 0 could report (e.g. still starting up): nothing new was saved, and
        # a requeue resumes from the newest complete checkpoint, so ask for one
        print(
            f"mm1: preempted ({signal.Signals(received[0]).name}) before training could save; requeue", file=sys.stderr
        )
        return REQUEUE_EXIT
    if code != 0:
        print(failure_message(code, cmd), file=sys.stderr, flush=True)
    return code


def failure_message(code: int, cmd: list[str]) -> str:
    """One line for a launcher that failed without a status from rank 0: a rank raised an error or
    died (torchrun's report above names the rank and its exit code), and where training resumes."""
    out = cmd[cmd.index("--out") + 1] if "--out" in cmd[:-1] else None
    where = ""
    if out is not None and (Path(out) / "resume").is_dir():  # mm1 train's resumable checkpoints
        from mm1.train.state import latest  # here: only on failure (torch and megatron are slow to import)

        newest = latest(Path(out) / "resume")
        where = (
            f"; the next run resumes from {newest}" if newest else "; no complete checkpoint: the next run starts over"
        )
    return (
        f"mm1: a training process failed or died (launcher exit {code}; see its report above for the rank: "
        f"exitcode -9 is a SIGKILL, usually the kernel's OOM killer){where}"
    )


class TrainJob(Checkpointable):
    """``train(cfg, packed, tokenizer, out_dir)`` as a submitit job that requeues itself.

    On preemption or timeout submitit calls :meth:`checkpoint` and requeues what it returns: the
    same training with ``train.resume=true``, which continues from the newest resumable checkpoint.
    """

    def __init__(self, cfg, packed: Path, tokenizer: Path, out_dir: Path) -> None:
        self.cfg, self.packed, self.tokenizer, self.out_dir = cfg, Path(packed), Path(tokenizer), Path(out_dir)

    def __call__(self):
        from mm1.train.trainer import train

        return train(self.cfg, self.packed, self.tokenizer, self.out_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        train_cfg = self.cfg.train.model_copy(update={"resume": True})
        resumed = TrainJob(self.cfg.model_copy(update={"train": train_cfg}), self.packed, self.tokenizer, self.out_dir)
        return DelayedSubmission(resumed)
