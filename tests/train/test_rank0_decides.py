"""What every rank must do alike is decided by rank 0 and agreed in a collective: a save that
``train.save_every_minutes`` asks for (rank 0's clock; the others' clocks are never read) and the
checkpoint a run resumes from (rank 0's listing of the resume folder, which on a shared filesystem
with lagging metadata can differ from another rank's). Two gloo processes under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mm1.train import checksums, state
from tinykit import TINY

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

WORKER = Path(__file__).with_name("_rank_clock_worker.py")


def fake_checkpoint(root: Path, step: int, facts: dict) -> None:
    """A complete checkpoint folder as far as choosing one goes: its state.json and checksum manifest."""
    folder = state.step_dir(root, step)
    folder.mkdir(parents=True)
    (folder / state.STATE).write_text(json.dumps({"step": step, **facts}))
    checksums.seal(folder)


# Rank 0's clock after each step (s). With a save once 60 s have passed since the last one:
# step 3 (65 s after the start), step 4 (135 - 65 = 70), step 9 (195 - 135 = 60); step 10 is
# 40 s after that. Rank 1's clock runs 1000x faster: read, it would save after every step.
ELAPSED = [20, 50, 65, 135, 145, 155, 165, 190, 195, 235]
FACTS = {"train": {"steps": 10, "lr": 0.001}, "layout": {"world_size": 2}}


@pytest.fixture(scope="module")
def ranks(tiny_world, tmp_path_factory) -> tuple[Path, list[dict]]:
    """One launch of both parts of ``_rank_clock_worker.py``: the folder it worked in, each rank's report.

    Resume folders, one per rank in each case: ``ahead`` (rank 1 already lists step 6, rank 0 not
    yet) and ``behind`` (rank 1 does not list step 4 yet)."""
    tmp = tmp_path_factory.mktemp("rank0-decides")
    for step in (2, 4):
        for root in ("ahead0", "ahead1", "behind0"):
            fake_checkpoint(tmp / root, step, FACTS)
    fake_checkpoint(tmp / "ahead1", 6, FACTS)
    fake_checkpoint(tmp / "behind1", 2, FACTS)
    cases = [[str(tmp / "ahead0"), str(tmp / "ahead1")], [str(tmp / "behind0"), str(tmp / "behind1")]]
    sets = [*TINY, "parallel.world_size=2", "train.steps=10", "train.save_every_minutes=1"]
    sets += ["train.save_at_end=false", "train.keep_last=10"]
    args = {"facts": FACTS, "cases": cases, "elapsed": ELAPSED, "sets": sets, "out": str(tmp / "run")}
    args |= {"packed": str(tiny_world["packed"]), "tokenizer": str(tiny_world["tokenizer"]), "report": str(tmp)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, json.dumps(args)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return tmp, [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]


def test_timed_saves_happen_at_the_steps_rank0s_clock_chose_on_every_rank(ranks):
    tmp, reports = ranks
    assert [r["timed"] for r in reports] == [[3, 4, 9], [3, 4, 9]]
    assert [p.name for p in state.complete(tmp / "run" / "resume")] == ["step_000003", "step_000004", "step_000009"]


def test_every_rank_resumes_the_step_rank0_chose_or_all_fail_in_one_line(ranks):
    tmp, reports = ranks
    assert [r["resume"][0] for r in reports] == ["step_000004", "step_000004"]  # rank 1 alone would take 6
    for rank, r in enumerate(reports):
        error = r["resume"][1]["error"]
        assert error.startswith("cannot resume: rank(s) 1 do not see ") and "\n" not in error, error
        assert str(state.step_dir(tmp / f"behind{rank}", 4)) in error  # each rank names its own path
    assert state.latest(tmp / "ahead1") == state.step_dir(tmp / "ahead1", 6)  # nothing was moved or deleted
