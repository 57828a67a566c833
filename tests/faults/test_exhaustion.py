"""Item 8: resource exhaustion. A full disk while a checkpoint is written is one clear error (exit 1,
naming the step, the folder, the free space and the intact previous checkpoint), and the rerun
after freeing space resumes; running out of memory in the data loading (which runs inside the
training process: there are no loader workers) fails the job with a message, never a hang.

The full disk is a small tmpfs mounted for the test (root only: ``root`` marker; without root the
tests fail, unless ``MM1_NO_ROOT=1``, which skips them).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from faultkit import assert_intact, snapshot, wait_for
from faultkit import small_fs as faultkit_small_fs

from mm1 import atomic
from mm1.cli import main as mm1
from mm1.data.batches import PackedData
from mm1.train import state
from mm1.train.signals import Preempted
from mm1.train.trainer import train
from tinykit import TINY, tiny, train_inputs

pytestmark = [pytest.mark.faults(item=8)]

SETS = ["train.save_interval=2", "train.keep_last=2"]
CURVE = ["step", "loss", "lr", "grad_norm"]


def train_args(tiny_world, out: Path, *overrides: str) -> list[str]:
    sets = [arg for s in TINY + list(overrides) for arg in ("--set", s)]
    return ["train", *train_inputs(tiny_world), "--out", str(out), *sets]


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MiB tmpfs: a disk that fills up."""
    with faultkit_small_fs(tmp_path / "small", "16m") as mnt:
        yield mnt


def fill(mnt: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of ``mnt``'s free space; delete the returned file to free it."""
    filler = mnt / "filler"
    size = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize - leave
    with filler.open("wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(size, 1))
    return filler


@pytest.fixture(scope="module")
def reference(tiny_world, tmp_path_factory) -> pl.DataFrame:
    out = tmp_path_factory.mktemp("reference")
    train(tiny(*SETS), tiny_world["packed"], tiny_world["tokenizer"], out)
    return pl.read_csv(out / "metrics.csv")


def same_curve(out: Path, reference: pl.DataFrame) -> None:
    got = pl.read_csv(out / "metrics.csv")
    for column in CURVE:
        assert got[column].to_list() == reference[column].to_list(), column  # bit for bit


@pytest.mark.root
def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_no_temp(small_fs):
    target = atomic.write_text(small_fs / "metrics.csv", "old\n")
    fill(small_fs, leave=0)
    with pytest.raises(OSError) as exc:
        atomic.write_bytes(target, b"x" * (1 << 20))
    assert exc.value.errno == errno.ENOSPC
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler", "metrics.csv"]  # no temp file left


@pytest.mark.root
def test_disk_full_while_saving_is_a_clear_error_and_the_previous_checkpoint_is_intact(
    tiny_world, reference, small_fs, capsys
):
    out = small_fs / "run"
    with pytest.raises(Preempted):
        train(tiny(*SETS), tiny_world["packed"], tiny_world["tokenizer"], out, stop_after=2)
    resume = out / "resume"
    before = snapshot(resume)
    filler = fill(small_fs, leave=256 << 10)  # a checkpoint of the tiny model is about 2 MB

    capsys.readouterr()
    assert mm1(train_args(tiny_world, out, *SETS)) == 1  # not 75: a requeue would only fill the disk again
    err = capsys.readouterr().err
    lines = re.findall(r"mm1 train: error: .*", err)  # (after the progress bar, on its line)
    assert len(lines) == 1, err[-3000:]
    message = lines[0]
    assert "could not write checkpoint step 4" in message, message
    assert str(resume / "step_000004.partial") in message, message
    assert "No space left on device" in message, message
    assert re.search(r"\d+\.\d MiB free on the file system of ", message), message
    assert f"the newest complete checkpoint {resume / 'step_000002'} is intact" in message, message
    assert_intact(resume, before)
    assert [p.name for p in resume.iterdir() if p.name != state.LATEST] == ["step_000002"]  # no .partial left

    filler.unlink()  # space again: the rerun resumes and finishes on the uninterrupted curve
    assert train(tiny(*SETS), tiny_world["packed"], tiny_world["tokenizer"], out).resumed_from == 2
    same_curve(out, reference)


def test_memory_error_in_the_loader_fails_with_a_message(tiny_world, reference, tmp_path, monkeypatch, capsys):
    """The loader runs in the training process: an allocation that fails there (numpy's MemoryError)
    ends ``mm1 train`` with exit 1 and one line saying so; the checkpoints stay, the rerun resumes."""
    out = tmp_path / "run"
    real_batch, calls = PackedData.batch, []

    def batch(self, indices):
        calls.append(1)
        if len(calls) == 5:  # the first micro-batch of step 3 (2 per step)
            raise MemoryError("Unable to allocate 1.00 GiB for an array with shape (4, 268435456) and data type uint8")
        return real_batch(self, indices)

    monkeypatch.setattr(PackedData, "batch", batch)
    assert mm1(train_args(tiny_world, out, *SETS)) == 1
    err = capsys.readouterr().err
    assert "mm1 train: error: out of memory" in err and "Unable to allocate 1.00 GiB" in err, err[-3000:]
    assert "train.micro_batch_size" in err
    assert [p.name for p in state.complete(out / "resume")] == ["step_000002"]

    monkeypatch.setattr(PackedData, "batch", real_batch)
    assert train(tiny(*SETS), tiny_world["packed"], tiny_world["tokenizer"], out).resumed_from == 2
    same_curve(out, reference)


def rank_pid(ancestor: int, rank: int) -> int | None:
    """The PID of training rank ``rank`` (a torchrun worker, in a session of its own) under ``ancestor``."""
    parent = {}
    for proc in Path("/proc").iterdir():
        try:
            parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):  # not a process, or gone
            continue
    for pid in parent:
        up = pid
        while up in parent and up not in (ancestor, 0, 1):
            up = parent[up]
        if up != ancestor or pid == ancestor:
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and f"LOCAL_RANK={rank}".encode() in env:
            return pid
    return None


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigkill_of_one_rank_fails_the_job_with_a_message_not_a_hang(tiny_world, tmp_path):
    """The kernel's OOM killer sends SIGKILL to one process: rank 1 of a 2-process job dies between
    steps. torchrun ends the other rank, and ``mm1`` exits non-zero (not 75) within 120 s, saying a
    process died and where the next run resumes."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "mm1.cli",
        *train_args(tiny_world, out, "parallel.world_size=2", "train.steps=200", *SETS),
    ]
    log = tmp_path / "mm1.log"
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        resume = out / "resume"
        wait_for(lambda: state.latest(resume) or proc.poll() is not None, 300, "the first checkpoint")
        assert proc.poll() is None, log.read_text()[-3000:]
        victim = wait_for(lambda: rank_pid(proc.pid, 1), 30, "rank 1's process")
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        code = proc.wait(timeout=120)  # a hang fails here
        waited = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text()
    assert code not in (0, 75), output[-3000:]
    assert "SIGKILL" in output, output[-3000:]  # torchrun's report names the signal that killed the rank
    (line,) = [line for line in output.splitlines() if line.startswith("mm1: a training process failed or died")]
    newest = state.latest(resume)
    assert newest is not None and f"the next run resumes from {newest}" in line, line
    assert "OOM killer" in line
    print(f"mm1 exited {code} {waited:.1f} s after the kill")
