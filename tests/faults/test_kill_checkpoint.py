"""Item 2: ``kill -9`` of the trainer while it writes a checkpoint, at each point of the write.

Afterwards every checkpoint that looks complete (:func:`mm1.train.state.complete`) holds exactly the
bytes the uninterrupted run saved for that step (else :class:`~faultkit.DataLost`) and loads; the
newest complete one is the one the write had not yet replaced; and the rerun resumes from it and
repeats the uninterrupted loss curve bit for bit. The kills come from ``_inject.py`` (SIGKILL to
the process group, as ``kill -9 -PGID`` or the OOM killer would send).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import polars as pl
import pytest
import torch
from faultkit import assert_intact, snapshot, wait_for

from mm1.config import ParallelConfig
from mm1.parallel.setup import distributed
from mm1.train import checkpoint, state
from mm1.train.trainer import train
from tinykit import TINY, tiny, train_inputs

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import dist_checkpointing

pytestmark = [pytest.mark.faults(item=2), pytest.mark.slow]

INJECT = Path(__file__).with_name("_inject.py")
SETS = ["train.save_interval=1", "train.keep_last=2"]  # 6 steps, a checkpoint after each
CURVE = ["step", "loss", "lr", "grad_norm"]  # deterministic columns (the timings are not)


def train_args(tiny_world, out: Path, *overrides: str) -> list[str]:
    sets = [arg for s in TINY + SETS + list(overrides) for arg in ("--set", s)]
    return ["train", *train_inputs(tiny_world), "--out", str(out), *sets]


def not_a_shard(path: Path) -> bool:
    """The model and optimizer shards are the same bytes in two identical runs; other files are not
    (creation time, timings, megatron's pickled metadata, pickled RNG states)."""
    return path.suffix != ".distcp"


@pytest.fixture(scope="module")
def reference(tiny_world, tmp_path_factory) -> Path:
    """The uninterrupted run, keeping every checkpoint (keep_last may change between runs)."""
    out = tmp_path_factory.mktemp("reference")
    train(tiny(*SETS, "train.keep_last=6"), tiny_world["packed"], tiny_world["tokenizer"], out)
    return out


def kill_at(tiny_world, out: Path, point: str, step: int = 3, orphan: bool = False) -> tuple[int, str]:
    """Run ``mm1 train`` under ``_inject.py`` until it kills itself; return its exit code and output."""
    cmd = [sys.executable, str(INJECT), "--kill-at", point, "--step", str(step), *(["--orphan"] * orphan)]
    log = out.parent / f"{out.name}.log"
    with log.open("w") as f:  # a file, not a pipe: an orphaned writer would hold a pipe open
        env = {**os.environ, "MM1_ORPHAN_PIDFILE": str(out.parent / f"{out.name}.orphan")}
        proc = subprocess.Popen([*cmd, "--", *train_args(tiny_world, out)], stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
        try:
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return code, log.read_text()


def check_complete_checkpoints(resume: Path, reference: Path) -> list[int]:
    """Every complete checkpoint holds the reference run's shards for its step and loads; return their steps."""
    found = state.complete(resume)
    for path in found:
        assert_intact(path, snapshot(reference / "resume" / path.name, skip=not_a_shard), what=str(path))
        json.loads((path / state.STATE).read_text())
        assert pl.read_csv(path / state.METRICS)["step"].to_list() == list(range(1, int(path.name[5:]) + 1))
        with distributed(ParallelConfig(), seed=0):
            dist_checkpointing.load_plain_tensors(str(path))
    return [int(p.name.removeprefix("step_")) for p in found]


def resume_and_compare(tiny_world, out: Path, reference: Path, resumed_from: int):
    result = train(tiny(*SETS), tiny_world["packed"], tiny_world["tokenizer"], out)
    assert result.resumed_from == resumed_from
    got, want = pl.read_csv(out / "metrics.csv"), pl.read_csv(reference / "metrics.csv")
    for column in CURVE:
        assert got[column].to_list() == want[column].to_list(), column  # bit for bit
    leftovers = sorted(p.name for p in (out / "resume").iterdir() if not state._STEP_DIR.match(p.name))
    assert leftovers == [state.LATEST], leftovers  # no .partial or .deleting folder survives a finished save
    return result


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    with distributed(ParallelConfig(), seed=0):
        return dist_checkpointing.load_plain_tensors(str(ckpt))


# point -> (complete checkpoints after the kill during the save of step 3, the step the rerun resumes from)
EXPECT = {
    "before-data": ([1, 2], 2),
    "mid-data": ([1, 2], 2),
    "in-shard": ([1, 2], 2),  # a shard half written: its checkpoint is not complete
    "before-rename": ([1, 2], 2),
    "before-latest": ([1, 2, 3], 3),  # complete once renamed: the folders decide, not the pointer
    "mid-prune": ([2, 3], 3),  # step 1 was being deleted: gone from the list, not half there
}


@pytest.mark.parametrize("point", list(EXPECT))
def test_kill_at_point_resumes_from_the_previous_checkpoint(tiny_world, reference, tmp_path, point):
    out = tmp_path / "run"
    code, output = kill_at(tiny_world, out, point)
    assert code == -signal.SIGKILL, output[-3000:]
    resume = out / "resume"
    if point == "in-shard":  # the kill left a shard of step 3 cut short
        partial, whole = resume / f"step_000003{state.PARTIAL}", reference / "resume" / "step_000003"
        cut = [p.name for p in partial.glob("*.distcp") if p.stat().st_size < (whole / p.name).stat().st_size]
        assert cut, f"no shard cut short in {partial}: {sorted(partial.glob('*'))}"
    steps, resumed_from = EXPECT[point]
    assert check_complete_checkpoints(resume, reference) == steps, sorted(p.name for p in resume.iterdir())
    assert state.latest(resume) == state.step_dir(resume, resumed_from)
    assert not (out / "metrics.csv").exists()
    resume_and_compare(tiny_world, out, reference, resumed_from)
    assert check_complete_checkpoints(resume, reference) == [5, 6]


def test_kill_while_the_stage_checkpoint_is_swapped_keeps_a_whole_one(tiny_world, reference, tmp_path):
    """A finished run run again rewrites ``checkpoint/``; a kill while the old one is deleted leaves
    the new one in place (never a half-deleted folder with its model.json), and the rerun finishes."""
    out = tmp_path / "run"
    train(tiny(*SETS), tiny_world["packed"], tiny_world["tokenizer"], out)
    code, output = kill_at(tiny_world, out, "final-swap")
    assert code == -signal.SIGKILL, output[-3000:]
    assert list(out.glob("checkpoint.deleting")), "the kill did not happen during the swap"
    want = weights(reference / "checkpoint")
    got = weights(out / "checkpoint")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert checkpoint.read_meta(out / "checkpoint")["steps"] == 6
    with pytest.raises(ValueError, match="being written or deleted"):
        checkpoint.read_meta(out / "checkpoint.deleting")
    result = resume_and_compare(tiny_world, out, reference, resumed_from=6)
    got = weights(result.checkpoint)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not list(out.glob("checkpoint.*"))


def test_an_orphaned_checkpoint_writer_does_not_break_the_rerun(tiny_world, reference, tmp_path):
    """Killing the trainer's PID alone leaves megatron's forked writer process running, still writing
    into ``step_3.partial``; the rerun, started at once, moves that folder aside and resumes."""
    out = tmp_path / "run"
    code, output = kill_at(tiny_world, out, "mid-data", orphan=True)
    assert code == -signal.SIGKILL, output[-3000:]
    pidfile = tmp_path / "run.orphan"
    orphan = int(pidfile.read_text())
    try:
        os.kill(orphan, 0)  # still alive and writing while the rerun starts
        assert check_complete_checkpoints(out / "resume", reference) == [1, 2]
        resume_and_compare(tiny_world, out, reference, resumed_from=2)
        wait_for(lambda: not os.path.exists(f"/proc/{orphan}") or _zombie(orphan), 30, "the orphaned writer to end")
    finally:
        if os.path.exists(f"/proc/{orphan}") and not _zombie(orphan):
            os.kill(orphan, signal.SIGKILL)
    assert check_complete_checkpoints(out / "resume", reference) == [5, 6]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True
