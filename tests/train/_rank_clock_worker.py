"""Run by ``torchrun --nproc-per-node 2`` for tests/train/test_rank0_decides.py: JSON_ARGS. Two parts:

``timed``: the tiny training with ``train.save_every_minutes``, each rank with a fake clock of its own
(``mm1.train.loop.now``), set from the step the training is in: rank 0's from ``elapsed`` (seconds
after each step), rank 1's running 1000x faster. Each rank writes the steps it saved.

``resume``: for each case, :func:`mm1.train.state.resumable` on each rank's own resume folder
(``roots[rank]``): the listing each rank would get from a lagging shared filesystem. Each rank
writes what it chose, or the one-line error of :class:`~mm1.train.state.CheckpointNotVisible`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tinykit


def timed(args: dict, rank: int) -> object:
    from mm1.train import loop
    from mm1.train.trainer import train
    from tinykit import tiny

    clock, saves = [0.0], []

    def hook(point: str, step: int, _rank: int) -> None:
        if point == "step":  # inside step `step`, before the loop's decisions read the clock
            clock[0] = args["elapsed"][step - 1] if rank == 0 else 1000.0 * step
        elif point == "save":
            saves.append(step)

    loop.now = lambda: clock[0]
    loop.signal_hook = lambda: hook
    train(tiny(*args["sets"]), Path(args["packed"]), Path(args["tokenizer"]), Path(args["out"]))
    return saves


def resume(args: dict, rank: int) -> object:
    import torch

    from mm1.train import state

    torch.distributed.init_process_group("gloo")  # left up: the training then runs in it
    chosen = []
    for roots in args["cases"]:  # one resume folder per rank in each case
        try:
            found = state.resumable(Path(roots[rank]), args["facts"])
            chosen.append(found.name if found else None)
        except state.CheckpointNotVisible as exc:  # raised on every rank, so none is left waiting
            chosen.append({"error": str(exc)})
    return chosen


if __name__ == "__main__":  # one launch for both parts (starting 2 processes costs more than either)
    raw = json.loads(sys.argv[1])
    rank = int(os.environ["RANK"])
    result = {"resume": resume(raw, rank), "timed": timed(raw, rank)}
    Path(raw["report"], f"rank{rank}.json").write_text(json.dumps(result))
