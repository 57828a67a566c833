"""Requeues for week-long runs: a run whose SLURM time limit draws near stops after the step that
reaches ``train.stop_minutes_before_limit``, saves, and asks SLURM to requeue its job (``scontrol
requeue``) before it exits 75; what decides when and whether, with fake clocks, time limits and
``scontrol``/``squeue`` (the real requeue: tests/slurm/test_slurm_requeue.py)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from mm1.config import ParallelConfig
from mm1.parallel import launch, supervise
from mm1.train import loop, state
from mm1.train.signals import REQUEUE_EXIT, Preempted, agree
from mm1.train.trainer import train
from tinykit import tiny


def fake_tool(tmp_path: Path, monkeypatch, name: str, body: str) -> Path:
    """A ``name`` on PATH that runs the shell ``body``; its arguments are appended to the returned file."""
    calls = tmp_path / f"{name}.calls"
    tool = tmp_path / "bin" / name
    tool.parent.mkdir(exist_ok=True)
    tool.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n{body}\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:{Path('/usr/bin')}:{Path('/bin')}")
    return calls


@pytest.fixture
def in_slurm_job(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    for var in ("SUBMITIT_EXECUTOR", supervise.NO_REQUEUE_ENV, "SLURM_JOB_END_TIME"):
        monkeypatch.delenv(var, raising=False)


def test_requeue_asks_slurm_to_requeue_this_job(tmp_path, monkeypatch, in_slurm_job, capsys):
    calls = fake_tool(tmp_path, monkeypatch, "scontrol", "exit 0")
    assert supervise.requeue_slurm_job()
    assert calls.read_text() == "requeue 4242\n"
    assert "SLURM job 4242 requeued" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["outside SLURM", "under submitit", "opted out"])
def test_requeue_is_not_asked_outside_slurm_under_submitit_or_when_opted_out(
    tmp_path, monkeypatch, in_slurm_job, where
):
    calls = fake_tool(tmp_path, monkeypatch, "scontrol", "exit 0")
    if where == "outside SLURM":
        monkeypatch.delenv("SLURM_JOB_ID")
    elif where == "under submitit":
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # submitit requeues its jobs itself
    else:
        monkeypatch.setenv(supervise.NO_REQUEUE_ENV, "1")
    assert not supervise.requeue_slurm_job()
    assert not calls.exists()


def test_a_refused_requeue_says_why_in_one_line(tmp_path, monkeypatch, in_slurm_job, capsys):
    fake_tool(
        tmp_path, monkeypatch, "scontrol", "echo 'Requested operation is presently disabled for job 4242' >&2; exit 1"
    )
    assert not supervise.requeue_slurm_job()
    err = capsys.readouterr().err.strip()
    assert err == "mm1: exit 75: SLURM did not requeue job 4242: Requested operation is presently disabled for job 4242"


def test_the_job_end_time_comes_from_slurm(tmp_path, monkeypatch, in_slurm_job):
    fake_tool(tmp_path, monkeypatch, "squeue", "echo 2026-12-07T16:30:00")
    assert supervise.job_end_time() == datetime.datetime(2026, 12, 7, 16, 30).timestamp()  # squeue's local time
    monkeypatch.setenv("SLURM_JOB_END_TIME", "1765000000")  # SLURM 23.02+
    assert supervise.job_end_time() == 1765000000.0
    monkeypatch.delenv("SLURM_JOB_END_TIME")
    fake_tool(tmp_path, monkeypatch, "squeue", "echo NONE")  # no time limit
    assert supervise.job_end_time() is None
    monkeypatch.delenv("SLURM_JOB_ID")
    assert supervise.job_end_time() is None


@pytest.mark.parametrize(("code", "requeues"), [(REQUEUE_EXIT, 1), (0, 0), (1, 0)])
def test_the_launcher_asks_for_a_requeue_only_when_training_exits_75(tmp_path, monkeypatch, code, requeues):
    asked = []
    monkeypatch.setattr(launch, "run_supervised", lambda cmd, env: code)
    monkeypatch.setattr(launch, "requeue_slurm_job", lambda: asked.append(True))
    for var in ("WORLD_SIZE", "SLURM_PROCID", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    assert launch.relaunch_if_needed(ParallelConfig(world_size=2), ["train"], out=tmp_path / "out") == code
    assert len(asked) == requeues


def test_agree_is_each_flag_of_any_rank():
    assert agree(True, False, True) == [True, False, True]  # one process: its own flags


def test_a_run_near_its_time_limit_stops_saves_and_requeues(tiny_world, tmp_path, monkeypatch):
    clock = [1000.0]
    asked = []

    def hook(point: str, step: int, rank: int) -> None:
        if point == "step":
            clock[0] = 1000.0 + 240 * step  # each step takes 4 min

    monkeypatch.setattr(loop, "now", lambda: clock[0])
    monkeypatch.setattr(loop, "signal_hook", lambda: hook)
    monkeypatch.setattr(loop, "job_end_time", lambda: 1000.0 + 30 * 60)  # the limit: 30 min after the start
    monkeypatch.setattr(loop, "requeue_slurm_job", lambda: asked.append(True))
    # stop 10 min before the limit: once 20 min have passed, after step 5 of 6
    cfg = tiny("train.resume=false", "train.stop_minutes_before_limit=10", "train.save_at_end=false")
    with pytest.raises(Preempted) as stop:
        train(cfg, tiny_world["packed"], tiny_world["tokenizer"], tmp_path)
    assert stop.value.step == 5 and stop.value.code == REQUEUE_EXIT
    assert asked == [True]
    assert state.latest(tmp_path / "resume") == state.step_dir(tmp_path / "resume", 5)
