"""A 2-process training job to preempt: launch it, signal it at a step, requeue it, check what it saved.

One launch is ``mm1 train`` as a user, SLURM or Snakemake starts it: the ``mm1`` launcher runs
torchrun, torchrun runs the two workers (``python -m mm1.cli`` with ``RANK`` set), all in a process
group of their own. Its output goes to a log file, never to a pipe nobody reads (a full pipe would
stall the workers and look like a hang).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import psutil
from faultkit import wait_for
from trainkit import TINY

from mm1.train import state
from mm1.train.trainer import RESUME

STEPS = 24  # the signals land at steps <= STEPS - 11 (test_preempt.draw_points): the job is still running
LAYOUT = ["parallel.world_size=2", f"train.steps={STEPS}", "train.save_interval=2"]
KEEP_LAST = 2  # train.keep_last's default
LAUNCH_TIMEOUT = 300  # s: a "did not hang" limit; a launch takes about 15 s
CURVE = ("loss", "lr", "grad_norm")  # the columns an interrupted run must repeat bit for bit


def train_cmd(world: dict[str, Path], out: Path) -> list[str]:
    sets = [arg for s in TINY + LAYOUT for arg in ("--set", s)]
    inputs = ["--packed", str(world["packed"]), "--tokenizer", str(world["tokenizer"])]
    return ["mm1", "train", *inputs, "--out", str(out), *sets]


def logged_step(out: Path) -> int:
    """The last step DVCLive has logged (rank 0, after each step; 0 before the first).

    After a resume it still shows the step the previous launch stopped at until the new launch logs
    its first step: wait for a step *above* the resume point before signalling. DVCLive rewrites the
    file in place, so a read may catch it half written: read again.
    """
    path = out / "dvclive" / "metrics.json"
    for _ in range(200):
        try:
            return json.loads(path.read_text()).get("step", 0)
        except FileNotFoundError:
            return 0
        except json.JSONDecodeError:
            time.sleep(0.001)
    raise AssertionError(f"{path} stayed unreadable for 200 reads")


def step_of(path: Path | None) -> int:
    return int(path.name.removeprefix("step_")) if path else 0


class Launch:
    """One launch of a training command in its own process group (what SLURM and terminals signal)."""

    def __init__(self, cmd: list[str], log: Path) -> None:
        self.log = log
        with log.open("w") as sink:
            self.proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)

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

    def workers(self) -> dict[int, psutil.Process]:
        """The training processes torchrun started, by rank ({} before they exist)."""
        found = {}
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                rank = child.environ().get("RANK")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if rank is not None and "mm1.cli" in child.cmdline():
                found[int(rank)] = child
        return found

    def wait_for_step(self, out: Path, step: int) -> int:
        """Block until rank 0 has logged ``step`` (or a later one); fail if the launch ended first."""

        def reached() -> int:
            if not self.running():
                raise AssertionError(
                    f"the launch ended (exit {self.proc.returncode}) before step {step}\n{self.output()}"
                )
            return logged_step(out) >= step

        try:
            wait_for(reached, LAUNCH_TIMEOUT, f"step {step} to be logged in {out}", poll=0.01)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.output()}") from None
        return logged_step(out)

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
    """What one preempted launch left: its exit code, the step it saved, the steps logged around the signal."""

    code: int
    saved: int
    seen: int  # logged just before the signal
    after: int  # logged just after it
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


def preempt(launch: Launch, out: Path, step: int, signum: int, jitter: float, pid: int | None = None) -> Stop:
    """Once ``step`` is logged, wait ``jitter`` s (the signal may land mid-step or mid-save), send
    ``signum`` to the process group (or to ``pid`` alone), and wait for the launch to end."""
    launch.wait_for_step(out, step)
    time.sleep(jitter)
    seen = logged_step(out)
    if pid is None:
        launch.signal_group(signum)
    else:
        os.kill(pid, signum)
    after = logged_step(out)
    code = launch.wait()
    try:
        saved = checked_resume_folder(out)
    except AssertionError as exc:
        raise AssertionError(f"after exit {code}: {exc}\n{launch.output()}") from None
    return Stop(code=code, saved=saved, seen=seen, after=after, output=launch.output())


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
