"""Issue 21, item 3: one run per stage output folder (:mod:`mm1.outlock`).

A second run on the same ``--out`` fails at once with one line naming the holder, and touches
nothing; the first completes. The lock is the kernel's: a ``kill -9`` of the holder frees it, a
process forked by the holder (a checkpoint writer) does not keep it, and the ranks of one job do not
refuse each other (every 2-process test of the suite proves that last one too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import psutil
import pytest
from faultkit import assert_intact, snapshot, wait_for

from mm1 import cli, outlock
from mm1.train.signals import TEST_SIGNAL_ENV
from tinykit import TINY, train_inputs

pytestmark = pytest.mark.faults(item=9)

HOLDER = textwrap.dedent(
    """
    import sys, time
    from mm1 import outlock
    with outlock.hold(sys.argv[1]):
        print("held", flush=True)
        time.sleep(300)
    """
)
HOLDER_NAMED = HOLDER.replace("outlock.hold(sys.argv[1])", "outlock.hold(sys.argv[1], sys.argv[2])")


def start_holder(out: Path) -> subprocess.Popen:
    """A process that holds ``out``'s lock until it is killed (it says so once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), "--tag"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held", "the holder did not take the lock"
    return proc


def test_a_second_holder_is_refused_naming_the_first_until_a_kill_9_frees_it(tmp_path):
    out = tmp_path / "job"
    holder = start_holder(out)
    try:
        with pytest.raises(outlock.OutputBusy) as refused, outlock.hold(out):
            pass
        line = str(refused.value)
        assert "\n" not in line and str(out) in line, line
        assert f"pid {holder.pid} on " in line and "started " in line and "--tag" in line, line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with outlock.hold(out) as held:  # the kernel dropped the dead holder's lock: nothing stale to clear
        assert held == outlock.lock_path(out) and not out.exists()  # beside the folder, not in it
        with outlock.hold(out) as again:  # this process already holds it (a CLI and its library call)
            assert again is None


def test_figure_commands_share_their_folder_but_not_one_figure(tmp_path):
    """results/figures holds every figure: two figures are written side by side, one figure once."""
    figures = tmp_path / "results" / "figures"
    cmd = [sys.executable, "-c", HOLDER_NAMED, str(figures), "fig5d"]
    holder = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with outlock.hold(figures, "tiny_study") as other:  # another figure: its own lock
            assert other == figures.parent / ".figures.tiny_study.lock"
        with pytest.raises(outlock.OutputBusy) as refused, outlock.hold(figures, "fig5d"):
            pass
        assert ".figures.fig5d.lock" in str(refused.value) and f"pid {holder.pid}" in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    args = cli.parser().parse_args
    assert cli._artifact(args(["compare", "--id", "fig5d", "--spec", "{}", "--cell", "a=x", "--out", "o"])) == "fig5d"
    assert cli._artifact(args(["figure", "--metrics", "m", "--scores", "s", "--out", "o"])) == "tiny_study"
    assert cli._artifact(args(["world", "--out", "o"])) is None  # a stage's folder is its own


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """A writer forked by the holder (megatron's checkpoint writers) and orphaned by a killed trainer
    must not lock the folder against the rerun."""
    out = tmp_path / "job"
    with outlock.hold(out):
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # the child: lives on after the parent lets go
            os.close(read)
            os.write(write, b"x")
            signal.pause()
            os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b"x"
    try:
        with outlock.hold(out) as held:
            assert held is not None
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_ranks_leave_the_lock_to_their_launcher_or_rank_0(tmp_path, monkeypatch):
    out = tmp_path / "job"
    holder = start_holder(out)
    try:
        monkeypatch.setenv(outlock.HELD_ENV, str(outlock.lock_path(out)))  # set by mm1's launcher
        with outlock.hold(out) as held:
            assert held is None
        monkeypatch.delenv(outlock.HELD_ENV)
        monkeypatch.setenv("RANK", "1")  # a bare torchrun: rank 0 holds it
        with outlock.hold(out) as held:
            assert held is None
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(outlock.OutputBusy), outlock.hold(out):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def _train(tiny_world, out: Path, *sets: str) -> list[str]:
    args = [a for s in [*TINY, *sets] for a in ("--set", s)]
    inputs = train_inputs(tiny_world)
    return ["mm1", "train", *inputs, "--out", str(out), *args]


@pytest.mark.slow
def test_a_second_training_on_the_same_out_fails_at_once_and_the_first_completes(tiny_world, tmp_path):
    """The first training stops itself (SIGSTOP) inside step 2, so the second surely meets it running;
    the second, with another config and 2 processes (its launcher takes the lock), is refused in one
    line naming the first, changes nothing, and the first, continued, ends as a whole run."""
    out = tmp_path / "job"
    log = (tmp_path / "first.log").open("w")
    env = {**os.environ, TEST_SIGNAL_ENV: "step:2:SIGSTOP:0:self"}
    first = subprocess.Popen(_train(tiny_world, out), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        proc = psutil.Process(first.pid)
        wait_for(lambda: first.poll() is not None or proc.status() == psutil.STATUS_STOPPED, 300, "step 2")
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        before = snapshot(out)
        second = subprocess.run(
            _train(tiny_world, out, "parallel.world_size=2", "train.lr=0.002"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1, second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "is in use by another mm1 run" in lines[0], second.stderr
        assert f"pid {first.pid} on " in lines[0] and "mm1 train" in lines[0], lines[0]
        assert_intact(out, before, "a refused second training")
    finally:
        first.send_signal(signal.SIGCONT)
        code = first.wait(timeout=300)
        log.close()
    assert code == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert pl.read_csv(out / "metrics.csv")["step"].to_list() == list(range(1, 7))
