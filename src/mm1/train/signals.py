"""In-worker preemption signals: on SIGTERM/SIGUSR1/SIGUSR2 finish the step, save, and exit ``REQUEUE_EXIT``.

Each training process notes the signals (:class:`StopSignals`) instead of dying from them; the
training loop (:mod:`mm1.train.loop`) all-reduces the flag after each step, so every rank stops after
the same step, saves a resumable checkpoint and raises :class:`Preempted` (a ``SystemExit`` with code
``REQUEUE_EXIT`` = 75, EX_TEMPFAIL). Rank 0 first leaves that status for the launcher
(:func:`report_exit`, read by :func:`mm1.parallel.supervise.run_supervised`, which waits through the
signal; torchrun itself reports any worker exit as 1).

A requeued job (``scontrol requeue`` of its own job by the process that exits 75 inside a SLURM batch
job, :func:`mm1.parallel.supervise.requeue_slurm_job`; submitit's
:class:`~mm1.train.submitit_job.TrainJob`; a Snakemake retry) runs the same command again and
resumes from the checkpoint (``train.resume``). SIGINT (Ctrl-C) still stops at once.
:class:`SignalAt` is the fault tests' way to raise a signal at an exact point of training.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mm1.parallel.supervise import EXIT_STATUS_ENV, REQUEUE_EXIT, SIGNALS

__all__ = [
    "REQUEUE_EXIT",
    "SIGNALS",
    "TEST_SIGNAL_ENV",
    "Preempted",
    "SignalAt",
    "StopSignals",
    "agree",
    "report_exit",
]

TEST_SIGNAL_ENV = "MM1_TEST_SIGNAL_AT"  # a fault-test hook: SignalAt.from_env
POINTS = ("start", "step", "save")


@dataclass(frozen=True)
class SignalAt:
    """A fault-test hook: raise a preemption signal from a named point of training, so that a test's
    verdict never depends on when a signal sent from outside happens to land.

    ``MM1_TEST_SIGNAL_AT=POINT:STEP:SIGNAL[:RANK[:TARGET]]``, e.g. ``step:7:SIGTERM``. POINT is
    ``start`` (entering a training stage, before the handlers are installed; STEP is
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
        return agree(self.signum is not None)[0]

    def hand_over(self) -> None:
        """Call the handler each noted signal had before (if it was a Python function), in the order
        they came: submitit sends SIGTERM and SIGUSR2 together and only its USR2 handler requeues."""
        for signum in self.received:
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, None)


def agree(*flags: bool) -> list[bool]:
    """Each flag, true on every rank when it is true on any rank: one all-reduce (MAX) for all of
    them, a collective that every rank calls with as many flags. A decision of rank 0 alone (its
    clock) is agreed by passing ``rank == 0 and decision``: the other ranks pass False."""
    values = torch.tensor([float(f) for f in flags])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    return [v > 0 for v in values.tolist()]


def report_exit(code: int, rank: int) -> None:
    """Leave this run's exit status for :func:`~mm1.parallel.supervise.run_supervised` (rank 0, under it only)."""
    path = os.environ.get(EXIT_STATUS_ENV)
    if path and rank == 0:
        Path(path).write_text(f"{code}\n")
