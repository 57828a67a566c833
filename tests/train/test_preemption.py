"""Preemption: SIGTERM makes a training run finish its step, save a resumable checkpoint and exit
with REQUEUE_EXIT (75); running it again resumes and ends on the uninterrupted loss curve. The
submitit requeue protocol (TrainJob.checkpoint) is checked at the Python level."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import polars as pl
import pytest

from mm1.train import state
from mm1.train.signals import REQUEUE_EXIT, TEST_SIGNAL_ENV, Preempted, SignalAt, StopSignals
from mm1.train.submitit_job import TrainJob
from mm1.train.trainer import train
from tinykit import TINY, tiny, train_inputs

MM1 = ["mm1"]  # the launcher waits through the signal (mm1.parallel.supervise.run_supervised) and returns 75


def train_args(tiny_world, out: Path, *overrides: str) -> list[str]:
    sets = [arg for s in TINY + list(overrides) for arg in ("--set", s)]
    return ["train", *train_inputs(tiny_world), "--out", str(out), *sets]


def run_to_end(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def preempt_at(cmd: list[str], step: int, timeout: int = 300) -> tuple[int, str]:
    """Run ``cmd`` in its own process group; the trainer SIGTERMs the group from inside ``step``
    (:class:`~mm1.train.preempt.SignalAt`): what SLURM and terminals do, at a point no clock decides."""
    env = {**os.environ, TEST_SIGNAL_ENV: f"step:{step}:SIGTERM"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, output


def test_stop_signals_are_noted_agreed_and_handed_over():
    seen = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        with StopSignals() as stop:
            assert not stop.agreed()
            os.kill(os.getpid(), signal.SIGUSR1)  # noted, not acted on
            assert stop.agreed() and stop.signum == signal.SIGUSR1 and seen == []
        stop.hand_over()  # to the handler installed before (submitit's, in a submitit job)
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_every_noted_signal_is_handed_over_in_order():
    """submitit interrupts with SIGTERM then SIGUSR2; only its USR2 handler requeues, so both go on."""
    seen = []
    before = {
        sig: signal.signal(sig, lambda signum, frame: seen.append(signum)) for sig in (signal.SIGTERM, signal.SIGUSR2)
    }
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGTERM)  # a repeat is noted once
            assert stop.signum == signal.SIGTERM and seen == []
        stop.hand_over()
        assert seen == [signal.SIGTERM, signal.SIGUSR2]
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_sigterm_to_two_process_run_saves_and_resume_repeats_the_curve(tiny_world, tmp_path):
    layout = ["parallel.world_size=2", "train.steps=20", "train.save_interval=2"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_to_end(["mm1", *train_args(tiny_world, whole, *layout)])  # uninterrupted

    code, output = preempt_at([*MM1, *train_args(tiny_world, parts, *layout)], step=3)
    assert code == REQUEUE_EXIT, output[-3000:]
    saved = state.latest(parts / "resume")
    assert saved == state.step_dir(parts / "resume", 3), output[-3000:]  # the step the signal came in
    assert not (parts / "metrics.csv").exists()

    run_to_end([*MM1, *train_args(tiny_world, parts, *layout)])
    got, want = pl.read_csv(parts / "metrics.csv"), pl.read_csv(whole / "metrics.csv")
    assert got["step"].to_list() == list(range(1, 21))
    for column in ("loss", "lr", "grad_norm"):
        assert got[column].to_list() == want[column].to_list(), column  # bit for bit
    provenance = json.loads((parts / "provenance.json").read_text())
    assert provenance["resumed_from"] == str(saved)


@pytest.mark.slow
def test_sigterm_to_single_process_run_exits_for_requeue(tiny_world, tmp_path):
    # The signal reaches every process of the group, the checkpoint writer's helper process too
    # (started by the save at step 2): the save it asks for must still succeed.
    cmd = ["mm1", *train_args(tiny_world, tmp_path, "train.steps=20", "train.save_interval=2")]
    code, output = preempt_at(cmd, step=3)  # no torchrun: the trainer itself exits 75
    assert code == REQUEUE_EXIT, output[-3000:]
    assert state.latest(tmp_path / "resume") == state.step_dir(tmp_path / "resume", 3), output[-3000:]
    run_to_end(cmd)
    assert pl.read_csv(tmp_path / "metrics.csv")["step"].to_list() == list(range(1, 21))


@pytest.mark.parametrize(
    "spec",
    ["step:3", "step:x:SIGTERM", "stop:3:SIGTERM", "step:3:SIGFOO", "step:3:SIGTERM:0:all", "a:1:SIGTERM:0:self:x"],
)
def test_a_malformed_signal_hook_is_refused_naming_the_variable(monkeypatch, spec):
    monkeypatch.setenv(TEST_SIGNAL_ENV, spec)
    with pytest.raises(ValueError, match=f"{TEST_SIGNAL_ENV}=.*POINT:STEP:SIGNAL"):
        SignalAt.from_env()


def test_the_signal_hook_fires_at_its_point_step_and_rank_only(monkeypatch):
    monkeypatch.setenv(TEST_SIGNAL_ENV, "save:4:SIGUSR2:1:self")
    hook = SignalAt.from_env()
    assert hook == SignalAt("save", 4, signal.SIGUSR2, 1, "self")
    with StopSignals() as stop:
        for point, step, rank in [("step", 4, 1), ("save", 3, 1), ("save", 4, 0), ("start", 0, 1)]:
            hook(point, step, rank)
        assert stop.signum is None
        hook("save", 4, 1)
        assert stop.received == [signal.SIGUSR2]


def test_train_job_checkpoint_requeues_a_resuming_training(tiny_world, tmp_path):
    """submitit calls ``checkpoint()`` on preemption and runs the DelayedSubmission it returns."""
    from submitit.helpers import DelayedSubmission

    job = TrainJob(tiny("train.resume=false"), tiny_world["packed"], tiny_world["tokenizer"], tmp_path)
    with pytest.raises(Preempted):
        train(job.cfg, job.packed, job.tokenizer, job.out_dir, stop_after=3)  # what a preempted job() did

    delayed = job.checkpoint()
    assert isinstance(delayed, DelayedSubmission) and isinstance(delayed.function, TrainJob)
    assert delayed.function.cfg.train.resume and not job.cfg.train.resume
    delayed.dump(tmp_path / "submitted.pkl")  # submitit pickles it for the requeued job
    result = DelayedSubmission.load(tmp_path / "submitted.pkl").result()
    assert result.resumed_from == 3
    assert result.metrics["step"].to_list() == list(range(1, 7))
