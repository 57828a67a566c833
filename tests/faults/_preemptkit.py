"""A 2-process training job to preempt: launch it, signal it at a step, requeue it, check what it saved.

One launch is ``mm1 train`` as a user, SLURM or Snakemake starts it: the ``mm1`` launcher runs
torchrun, torchrun runs the two workers (``python -m mm1.cli`` with ``RANK`` set), all in a process
group of their own. Its output goes to a log file, never to a pipe nobody reads (a full pipe would
stall the workers and look like a hang).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import psutil
from faultkit import wait_for

from mm1.train import state
from mm1.train.loop import RESUME
from mm1.train.signals import TEST_SIGNAL_ENV
from tinykit import TINY

STEPS = 24
LAYOUT = ["parallel.world_size=2", f"train.steps={STEPS}", "train.save_interval=2"]
KEEP_LAST = 2  # train.keep_last's default
LAUNCH_TIMEOUT = 300  # s: a "did not hang" limit; a launch takes about 15 s
CURVE = ("loss", "lr", "grad_norm")  # the columns an interrupted run must repeat bit for bit


def train_cmd(world: dict[str, Path], out: Path) -> list[str]:
    sets = [arg for s in TINY + LAYOUT for arg in ("--set", s)]
    inputs = ["--packed", str(world["packed"]), "--tokenizer", str(world["tokenizer"])]
    return ["mm1", "train", *inputs, "--out", str(out), *sets]


def step_of(path: Path | None) -> int:
    return int(path.name.removeprefix("step_")) if path else 0


class Launch:
    """One launch of a training command in its own process group (what SLURM and terminals signal)."""

    def __init__(self, cmd: list[str], log: Path, signal_at: str | None = None) -> None:
        """``signal_at``: the trainer raises a signal itself at that point (:class:`~mm1.train.signals.SignalAt`)."""
        self.log = log
        env = {**os.environ, TEST_SIGNAL_ENV: signal_at} if signal_at else None
        with log.open("w") as sink:
            self.proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, *exc) -> None:
        if self.group():  # a failed test: leave no training behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.running():
            self.proc.wait()

    def group(self) -> list[int]:
        """The processes still in the launch's process group (the launcher, torchrun, workers)."""
        alive = []
        for pid in psutil.pids():
            try:
                if os.getpgid(pid) == self.proc.pid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        return alive

    def output(self, chars: int = 4000) -> str:
        return f"--- {self.log} (last {chars} chars) ---\n" + self.log.read_text(errors="replace")[-chars:]

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal_group(self, signum: int) -> bool:
        """Send ``signum`` to every process of the launch; False if none is left."""
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def wait(self) -> int:
        """The launcher's exit code, once every process of the launch has ended (none left behind)."""
        try:
            code = self.proc.wait(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the launch did not end within {LAUNCH_TIMEOUT} s\n{self.output()}") from None
        try:
            wait_for(lambda: not self.group(), 60, "the launch's processes to end")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; left behind: {self.group()}\n{self.output()}") from None
        return code


@dataclass(frozen=True)
class Stop:
    """What one preempted launch left: its exit code and the step of its newest complete checkpoint."""

    code: int
    saved: int
    output: str


def checked_resume_folder(out: Path) -> int:
    """The step of the newest complete checkpoint, after checking the folder a requeued run resumes from:
    no ``.partial`` left over, the ``latest`` pointer names the newest complete checkpoint, and at
    most ``keep_last`` of them kept. 0 when there is none."""
    root = out / RESUME
    newest = state.latest(root)
    leftovers = sorted(p.name for p in root.glob(f"*{state.PARTIAL}*")) if root.is_dir() else []
    assert not leftovers, f"{root}: unfinished checkpoints left behind: {leftovers}"
    if newest is None:
        return 0
    assert newest.name.startswith("step_") and state.PARTIAL not in newest.name, newest
    pointer = (root / state.LATEST).read_text().strip()
    assert pointer == newest.name, f"{root / state.LATEST} names {pointer}, the newest complete one is {newest.name}"
    assert len(state.complete(root)) <= KEEP_LAST, [p.name for p in state.complete(root)]
    return step_of(newest)


def saved_ranks(out: Path, step: int) -> list[str]:
    """The ranks whose RNG state the checkpoint of ``step`` holds (every rank writes its own)."""
    folder = state.step_dir(out / RESUME, step)
    return sorted(p.name for p in (folder / state.RNG).glob("rank_*.pt"))


def preempt(cmd: list[str], log: Path, out: Path, signal_at: str) -> Stop:
    """Launch ``cmd`` with the trainer raising a signal at ``signal_at``, and wait for it to end."""
    with Launch(cmd, log, signal_at) as launch:
        code = launch.wait()
    try:
        saved = checked_resume_folder(out)
    except AssertionError as exc:
        raise AssertionError(f"after exit {code}: {exc}\n{launch.output()}") from None
    return Stop(code=code, saved=saved, output=launch.output())


def run_to_end(cmd: list[str], log: Path) -> None:
    with Launch(cmd, log) as launch:
        code = launch.wait()
    assert code == 0, f"the run failed (exit {code})\n{launch.output()}"


def assert_same_curve(out: Path, reference: pl.DataFrame) -> None:
    """metrics.csv (and DVCLive's history) hold steps 1..STEPS once each, and the curve is the
    uninterrupted one bit for bit."""
    got = pl.read_csv(out / "metrics.csv")
    assert got["step"].to_list() == list(range(1, STEPS + 1)), got["step"].to_list()
    for column in CURVE:
        assert got[column].to_list() == reference[column].to_list(), f"{column} differs from the uninterrupted run"
    history = pl.read_csv(out / "dvclive" / "plots" / "metrics" / "loss.tsv", separator="\t")
    assert history["step"].to_list() == list(range(1, STEPS + 1)), "DVCLive's loss history repeats or lacks steps"
