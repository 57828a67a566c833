"""Data-parallel evaluation: `mm1 eval run` on 2 gloo ranks writes the files one process writes, byte for byte."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mm1.config import ParallelConfig
from mm1.eval import shard

# Several batches per task (6 val items per benchmark, 2 per batch), so both ranks decode and score.
OVERRIDES = ["eval.shots=[0,1]", "eval.micro_batch_size=2", "eval.likelihood=false"]


def _eval(run: dict[str, Path], out: Path, ranks: int) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    cmd = [*(launch if ranks > 1 else [sys.executable]), "-m", "mm1.cli", "eval", "run"]
    cmd += [a for o in OVERRIDES for a in ("--set", o)]
    cmd += ["--data", str(run["data"]), "--tokenizer", str(run["tokenizer"]), "--checkpoint", str(run["ckpt"])]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID")}
    env["OMP_NUM_THREADS"] = "1"  # the same kernels in both runs: one thread per process
    proc = subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _batches_run(stderr: str, desc: str) -> list[int]:
    """The batch count of each finished progress bar called ``desc`` (tqdm's "desc: 100%|...| n/n")."""
    return [int(n) for n in re.findall(rf"{desc}: 100%\|[^|]*\| (\d+)/\1 ", stderr)]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_ranks_write_the_scores_and_predictions_of_one(tiny_run, tmp_path: Path) -> None:
    one = _eval(tiny_run, tmp_path / "one", 1).stderr
    two = _eval(tiny_run, tmp_path / "two", 2).stderr
    # coco 0-shot has 3 batches: one process runs all 3, of two ranks rank 0 runs 2 and rank 1 runs 1
    assert _batches_run(one, "coco 0-shot") == [3] and sorted(_batches_run(two, "coco 0-shot")) == [1, 2]
    names = ["scores.csv", "summary.csv", "metrics.json"]
    names += sorted(str(p.relative_to(tmp_path / "one")) for p in (tmp_path / "one" / "predictions").iterdir())
    assert any(n.endswith("_1shot.json") for n in names) and len(names) > 5
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


def test_batches_go_round_robin_and_come_back_in_order_in_one_process(monkeypatch) -> None:
    assert shard.mine(5) == [0, 1, 2, 3, 4]  # no process group: one rank runs everything
    seen = []
    assert shard.map_batches([3, 1, 2], lambda b: (seen.append(b), b * 10)[1]) == [30, 10, 20]
    assert seen == [3, 1, 2]
    monkeypatch.setattr(shard, "_layout", lambda: (1, 2, True))  # data-parallel rank 1 of 2
    assert shard.mine(5) == [1, 3]


def test_the_layout_is_the_launchers_processes_or_one_per_gpu(tmp_path: Path, monkeypatch) -> None:
    from mm1.eval.cli import eval_parallel

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert eval_parallel(tmp_path, 2, 4) == ParallelConfig(world_size=1, tp=1)  # no GPU: one process
    monkeypatch.setenv("WORLD_SIZE", "3")  # under torchrun: its processes, data-parallel on CPU
    assert eval_parallel(tmp_path, 2, 4) == ParallelConfig(world_size=3, tp=1)
