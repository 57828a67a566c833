"""Issue 10, item 1: preemption of a 2-process training job, and its requeue.

SIGTERM (SLURM's preemption, ``scancel``), SIGUSR1 (``--signal=USR1@120``) or SIGUSR2 (submitit)
reaches the job at seeded points -- inside a step, or as a save begins. The trainer raises the
signal itself at that point (:class:`~mm1.train.signals.SignalAt`, to the launch's process group as
SLURM would), so a loaded machine changes how long a case takes, never where the signal lands.
Every time the job must finish the step, save a resumable checkpoint and exit 75 (requeue me); the
requeued job (the same command again) resumes from it, and in the end the loss curve is the
uninterrupted one, bit for bit. A signal to one rank alone stops every rank after the same step; a
signal during start-up, before the first step, loses nothing. And (item 2) a ``kill -9`` of one
rank while the job saves leaves the newest complete checkpoint to resume from, on the same curve.
"""

from __future__ import annotations

import json
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from _preemptkit import (
    STEPS,
    Launch,
    Stop,
    assert_same_curve,
    checked_resume_folder,
    preempt,
    run_to_end,
    saved_ranks,
    train_cmd,
)
from faultkit import DataLost, assert_intact, snapshot

from mm1.train import state
from mm1.train.loop import RESUME
from mm1.train.signals import REQUEUE_EXIT

pytestmark = [pytest.mark.faults(item=1), pytest.mark.slow, pytest.mark.multiprocess]

SEED = 10
POINTS = 5  # preemptions of one job: 6 launches
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
SAVE_INTERVAL = 2  # _preemptkit.LAYOUT


@dataclass(frozen=True)
class Point:
    where: str  # "step": inside step ``step``; "save": as the save after step ``step`` begins
    step: int
    signum: int

    def __str__(self) -> str:
        return f"{signal.Signals(self.signum).name} inside {self.where} {self.step}"

    @property
    def spec(self) -> str:  # MM1_TEST_SIGNAL_AT: rank 0 sends it to the launch's process group
        return f"{self.where}:{self.step}:{signal.Signals(self.signum).name}"

    @property
    def saves(self) -> int:
        """The step the job saves and stops after: the step the signal came in, or, when it came as
        the save of a step began (that step's stop check was over), the next one."""
        return self.step + (self.where == "save")


def draw_points(seed: int, n: int) -> list[Point]:
    """``n`` points at increasing save steps (even), each inside that step or as its save begins,
    or inside the step after it; SIGTERM, SIGUSR1 and SIGUSR2 all among them."""
    rng = random.Random(seed)
    evens = sorted(rng.sample(range(SAVE_INTERVAL, STEPS - 3, SAVE_INTERVAL), n))
    wheres = [rng.choice(("step", "save")) for _ in evens]
    steps = [even + (where == "step" and rng.random() < 0.5) for even, where in zip(evens, wheres, strict=True)]
    signums = [rng.choice(SIGNALS) for _ in evens]
    for missing in [s for s in SIGNALS if s not in signums]:  # the draw missed one: put it in at a drawn place
        free = [i for i, s in enumerate(signums) if signums.count(s) > 1]
        signums[rng.choice(free)] = missing
    return [Point(w, s, sig) for w, s, sig in zip(wheres, steps, signums, strict=True)]


@pytest.fixture(scope="module")
def reference(tiny_world, tmp_path_factory) -> pl.DataFrame:
    """The uninterrupted run's metrics."""
    base = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(train_cmd(tiny_world, base / "job"), base / "launch.log")
    return pl.read_csv(base / "job" / "metrics.csv")


@dataclass
class StartupSignal:
    signum: int
    when: str  # the stage of start-up it was sent in
    sent: bool  # False: the launch had ended before it (a failure of its own)
    code: int
    lost: str | None  # what changed in the job's folder (DataLost), None when nothing
    resume: int  # the newest complete checkpoint afterwards
    output: str


@dataclass
class OneRankJob:
    """A job stopped by a signal to one rank, then signalled during two start-ups, then run to the end."""

    out: Path
    stop: Stop
    saved: dict  # what the checkpoint of that stop held (the final launch prunes it)
    startups: list[StartupSignal]
    final_code: int
    final_output: str


def _startup_signals(cmd: list[str], out: Path, logs: Path, rng: random.Random) -> list[StartupSignal]:
    """Signal two launches while they start: the launcher and torchrun starting (0.1 to 1 s in, long
    before a worker can import torch; a loaded machine only makes it earlier in the start-up), and a
    worker entering training, before its signal handlers (rank 0 raises it to the launch's group)."""
    found = []
    for n, when in enumerate(("launcher", "workers"), start=1):
        before = snapshot(out)
        signum = rng.choice(SIGNALS)
        spec = f"start:0:{signal.Signals(signum).name}" if when == "workers" else None
        with Launch(cmd, logs / f"startup{n}.log", spec) as launch:
            if when == "launcher":
                time.sleep(rng.uniform(0.1, 1.0))
                sent = launch.running() and launch.signal_group(signum)
            else:
                sent = True
            code = launch.wait()
        try:
            assert_intact(out, before, f"{signal.Signals(signum).name} during the start-up of the {when}")
            lost = None
        except DataLost as exc:
            lost = str(exc)
        found.append(StartupSignal(signum, when, sent, code, lost, checked_resume_folder(out), launch.output()))
    return found


@pytest.fixture(scope="module")
def one_rank_job(tiny_world, tmp_path_factory) -> OneRankJob:
    """SIGUSR1 to the rank-1 worker alone inside a seeded step; the requeued job is signalled twice
    while it starts; the next launch runs to the end. (Both tests below read it: one job, fewer launches.)"""
    base = tmp_path_factory.mktemp("one-rank")
    out = base / "job"
    cmd = train_cmd(tiny_world, out)
    rng = random.Random(SEED + 1)
    at = rng.randrange(3, 10)
    stop = preempt(cmd, base / "launch1.log", out, f"step:{at}:SIGUSR1:1:self")
    folder = state.step_dir(out / RESUME, stop.saved)
    saved = {
        "at": at,
        "ranks": saved_ranks(out, stop.saved),
        "step": json.loads((folder / state.STATE).read_text())["step"] if folder.is_dir() else None,
        "rows": pl.read_csv(folder / state.METRICS)["step"].to_list() if folder.is_dir() else [],
    }
    startups = _startup_signals(cmd, out, base, rng)
    with Launch(cmd, base / "final.log") as launch:
        code = launch.wait()
    return OneRankJob(out, stop, saved, startups, code, launch.output())


def resumed_from(out: Path) -> str:
    return json.loads((out / "provenance.json").read_text())["resumed_from"]


def test_seeded_preemptions_repeat_the_uninterrupted_curve(tiny_world, reference, tmp_path):
    """One job preempted at 5 seeded points and requeued 5 times (6 launches)."""
    out = tmp_path / "job"
    cmd = train_cmd(tiny_world, out)
    resume = 0
    for n, point in enumerate(draw_points(SEED, POINTS), start=1):
        stop = preempt(cmd, tmp_path / f"launch{n}.log", out, point.spec)
        what = f"launch {n} ({point})"
        assert stop.code == REQUEUE_EXIT, f"{what}: exit {stop.code}, not {REQUEUE_EXIT}\n{stop.output}"
        assert stop.saved == point.saves, f"{what}: saved step {stop.saved}, not {point.saves}\n{stop.output}"
        assert not (out / "metrics.csv").exists(), f"{what}: wrote the final metrics of an unfinished run"
        resume = stop.saved

    run_to_end(cmd, tmp_path / f"launch{POINTS + 1}.log")
    assert_same_curve(out, reference)
    assert resumed_from(out) == str(state.step_dir(out / RESUME, resume))


def test_signal_to_one_rank_stops_every_rank_after_the_same_step(one_rank_job, reference):
    """SIGUSR1 to the rank-1 worker only (not the launcher, not rank 0): the ranks agree after each step."""
    job, stop = one_rank_job, one_rank_job.stop
    # Exit 75 comes from rank 0: it stopped after a step too, it was not ended by torchrun.
    assert stop.code == REQUEUE_EXIT, f"exit {stop.code}, not {REQUEUE_EXIT}\n{stop.output}"
    assert stop.saved == job.saved["at"], f"saved step {stop.saved}; signalled in step {job.saved['at']}\n{stop.output}"
    saved = state.step_dir(job.out / RESUME, stop.saved)
    assert job.saved["ranks"] == ["rank_00000.pt", "rank_00001.pt"], f"{saved}: not saved by both ranks"
    assert job.saved["step"] == stop.saved, f"{saved}/{state.STATE}: step {job.saved['step']}"
    assert job.saved["rows"] == list(range(1, stop.saved + 1)), f"{saved}/{state.METRICS}: steps {job.saved['rows']}"

    assert job.final_code == 0, f"the requeued run failed (exit {job.final_code})\n{job.final_output}"
    assert_same_curve(job.out, reference)
    assert resumed_from(job.out) == str(saved)


def test_signal_during_startup_loses_nothing(one_rank_job, reference):
    """A requeued job signalled while it starts -- the launcher, then the workers importing torch and
    megatron -- dies before its first step: every file of the job is as it was, and the next launch
    resumes from the same checkpoint and ends on the uninterrupted curve."""
    job = one_rank_job
    for signalled in job.startups:
        what = f"{signal.Signals(signalled.signum).name} during the start-up of the {signalled.when}"
        assert signalled.sent, f"{what}: the launch ended before the signal (exit {signalled.code})\n{signalled.output}"
        assert signalled.code != 0, f"{what}: exit 0\n{signalled.output}"
        if signalled.when == "workers":  # the launcher outlives the signal: it asks for a requeue
            assert signalled.code == REQUEUE_EXIT, f"{what}: exit {signalled.code}\n{signalled.output}"
        if signalled.lost:
            raise DataLost(f"{signalled.lost}\n{signalled.output}")
        assert signalled.resume == job.stop.saved, f"{what}: newest checkpoint now step {signalled.resume}"

    assert job.final_code == 0, f"the requeued run failed (exit {job.final_code})\n{job.final_output}"
    assert_same_curve(job.out, reference)
    assert resumed_from(job.out) == str(state.step_dir(job.out / RESUME, job.stop.saved))


@pytest.mark.faults(item=2)
def test_kill_9_of_one_rank_as_a_save_begins_resumes_from_the_newest_complete_checkpoint(
    tiny_world, reference, tmp_path
):
    """Rank 1 SIGKILLs itself as the save of step 6 begins, while rank 0 is inside it: the job fails
    (not 75: nothing was saved), no partial checkpoint counts, and the next launch resumes from step 4
    and ends on the uninterrupted curve."""
    out = tmp_path / "job"
    cmd = train_cmd(tiny_world, out)
    with Launch(cmd, tmp_path / "killed.log", "save:6:SIGKILL:1:self") as launch:
        code = launch.wait()
    assert code not in (0, REQUEUE_EXIT), f"exit {code}\n{launch.output()}"
    assert "SIGKILL" in launch.output() or "-9" in launch.output(), launch.output()
    resume = out / RESUME
    assert [p.name for p in state.complete(resume)] == ["step_000002", "step_000004"], sorted(resume.iterdir())
    assert state.latest(resume) == state.step_dir(resume, 4)

    run_to_end(cmd, tmp_path / "rerun.log")
    assert_same_curve(out, reference)
    assert resumed_from(out) == str(state.step_dir(resume, 4))
