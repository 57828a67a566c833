"""Issue 10, item 1: preemption of a 2-process training job, and its requeue.

SIGTERM (SLURM's preemption, ``scancel``) or SIGUSR1 (``--signal=USR1@120``) reaches the job at
seeded points -- just after a step, or a few ms to 300 ms later, mid-step or mid-save. Every time
the job must finish the step, save a resumable checkpoint and exit 75 (requeue me); the requeued job
(the same command again) resumes from it, and in the end the loss curve is the uninterrupted one,
bit for bit. A signal to one rank alone stops every rank after the same step; a signal during
start-up, before the first step, loses nothing.
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
from faultkit import DataLost, assert_intact, snapshot, wait_for

from mm1.train import state
from mm1.train.preempt import REQUEUE_EXIT
from mm1.train.trainer import RESUME

pytestmark = [pytest.mark.faults(item=1), pytest.mark.slow, pytest.mark.multiprocess]

SEED = 10
POINTS = 5  # preemptions of one job: 6 launches
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
MAX_JITTER = 0.3  # s after the step is logged; a tiny step takes 0.06-0.1 s, a save 0.1-0.2 s


@dataclass(frozen=True)
class Point:
    step: int  # signal once this step is logged ...
    signum: int
    jitter: float  # ... and this many seconds have passed

    def __str__(self) -> str:
        return f"{signal.Signals(self.signum).name} {self.jitter * 1000:.0f} ms after step {self.step}"


def draw_points(seed: int, n: int) -> list[Point]:
    """``n`` distinct steps (far enough from the end that the job is still running), each with a
    signal -- SIGTERM and SIGUSR1 both among them -- and a jitter."""
    rng = random.Random(seed)
    # 10 steps (0.6-1 s) before the end at least: the jitter, the polling of the logged step and a
    # loaded machine must not let the job finish before the signal lands
    steps = sorted(rng.sample(range(2, STEPS - 10), n))
    signums = [rng.choice(SIGNALS) for _ in steps]
    if len(set(signums)) < len(SIGNALS):  # the draw missed one: put it in at a drawn place
        signums[rng.randrange(n)] = next(s for s in SIGNALS if s not in signums)
    return [Point(step, signum, rng.uniform(0, MAX_JITTER)) for step, signum in zip(steps, signums, strict=True)]


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory) -> pl.DataFrame:
    """The uninterrupted run's metrics."""
    base = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(train_cmd(world, base / "job"), base / "launch.log")
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
    """Signal two launches while they start: the launcher and torchrun starting (up to 1 s in), and
    the workers importing torch and megatron (up to 0.5 s after both exist); both die before step 1."""

    def launcher(launch: Launch) -> None:
        time.sleep(rng.uniform(0.1, 1.0))

    def workers(launch: Launch) -> None:
        wait_for(lambda: len(launch.workers()) == 2 or not launch.running(), 120, "torchrun to start 2 workers")
        time.sleep(rng.uniform(0, 0.5))

    found = []
    for n, when in enumerate((launcher, workers), start=1):
        before = snapshot(out)
        signum = rng.choice(SIGNALS)
        with Launch(cmd, logs / f"startup{n}.log") as launch:
            when(launch)
            sent = launch.running() and launch.signal_group(signum)
            code = launch.wait()
        try:
            assert_intact(out, before, f"{signal.Signals(signum).name} during the start-up of the {when.__name__}")
            lost = None
        except DataLost as exc:
            lost = str(exc)
        found.append(
            StartupSignal(signum, when.__name__, sent, code, lost, checked_resume_folder(out), launch.output())
        )
    return found


@pytest.fixture(scope="module")
def one_rank_job(world, tmp_path_factory) -> OneRankJob:
    """SIGUSR1 to the rank-1 worker alone at a seeded step; the requeued job is signalled twice while
    it starts; the next launch runs to the end. (Both tests below read it: one job, fewer launches.)"""
    base = tmp_path_factory.mktemp("one-rank")
    out = base / "job"
    cmd = train_cmd(world, out)
    rng = random.Random(SEED + 1)
    with Launch(cmd, base / "launch1.log") as launch:
        launch.wait_for_step(out, 1)
        rank1 = launch.workers()[1].pid
        stop = preempt(launch, out, rng.randrange(3, 10), signal.SIGUSR1, rng.uniform(0, MAX_JITTER), pid=rank1)
    folder = state.step_dir(out / RESUME, stop.saved)
    saved = {
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


def test_seeded_preemptions_repeat_the_uninterrupted_curve(world, reference, tmp_path):
    """One job preempted at 5 seeded points and requeued 5 times (6 launches)."""
    out = tmp_path / "job"
    cmd = train_cmd(world, out)
    resume = 0
    for n, point in enumerate(draw_points(SEED, POINTS), start=1):
        # After a resume DVCLive still shows the step the last launch stopped at: wait for a later one,
        # or the signal lands during start-up (test_signal_during_startup_loses_nothing).
        with Launch(cmd, tmp_path / f"launch{n}.log") as launch:
            stop = preempt(launch, out, max(point.step, resume + 1), point.signum, point.jitter)
        what = f"launch {n} ({point}; logged step {stop.seen} at the signal)"
        assert stop.code == REQUEUE_EXIT, f"{what}: exit {stop.code}, not {REQUEUE_EXIT}\n{stop.output}"
        assert stop.seen <= stop.saved <= stop.after + 1, (
            f"{what}: saved step {stop.saved}; it must stop after the step in progress\n{stop.output}"
        )
        assert stop.saved > resume, f"{what}: made no progress past step {resume}"
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
    # Rank 1 may be waiting in the step's agreement, its "no signal" already sent, while rank 0 still
    # logs that step: then both stop after the next one (a signal to the group reaches rank 0 too: +1).
    assert stop.seen <= stop.saved <= stop.after + 2, f"saved step {stop.saved} after step {stop.seen}\n{stop.output}"
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
