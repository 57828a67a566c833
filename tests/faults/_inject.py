"""Run ``mm1`` with a fault planted in it: ``python tests/faults/_inject.py --kill-at POINT [--step N] -- train ...``.

The worker patches one function so that the process SIGKILLs itself (``kill -9``: no handler, no
cleanup, no ``finally``) at a named point of writing a checkpoint, then runs ``mm1.cli.main``.
Points of the resumable checkpoint of step ``--step`` (:func:`mm1.train.state.save`):

    before-data     before megatron writes the model and optimizer shards
    mid-data        in a forked writer process, after its file is written: kills the trainer (its
                    parent); with --orphan the writer lives on and keeps writing (an orphan)
    in-shard        in a forked writer process, inside a shard's write: half of the shard's bytes
                    are on disk (the file is cut to half its length), then the kill
    before-rng      before the RNG states are written
    before-rename   before ``step_N.partial`` is renamed to ``step_N`` (the data is all there)
    before-latest   after the rename, before the ``latest`` pointer is updated
    mid-prune       while an old checkpoint is deleted: half of its files are gone, then the kill

and of the stage output (:func:`mm1.train.checkpoint.save`, at the end of a run):

    final-swap      while the old ``checkpoint/`` is deleted: half of its files are gone, then the kill

The test runs this in a new session (``start_new_session=True``): the kill goes to the process
group, as the OOM killer or ``kill -9 -PGID`` would, unless --orphan.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

POINTS = (
    "before-data",
    "mid-data",
    "in-shard",
    "before-rng",
    "before-rename",
    "before-latest",
    "mid-prune",
    "final-swap",
)


def _die(group: bool = True) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.killpg(0, signal.SIGKILL) if group else os.kill(os.getpid(), signal.SIGKILL)


def _delete_half_then_die(path: Path) -> None:
    """What a kill in the middle of ``rmtree(path)`` leaves: the shards go first, then the rest."""
    files = sorted((p for p in Path(path).rglob("*") if p.is_file()), key=lambda p: (p.suffix != ".distcp", str(p)))
    for p in files[: max(1, len(files) // 2)]:
        p.unlink()
    _die()


def plant(point: str, step: int, orphan: bool) -> None:
    from mm1.train import checkpoint, state

    saving = f"step_{step:06d}{state.PARTIAL}"
    armed = {"on": False}

    real_save = state.dist_checkpointing.save

    def save(sharded, path, *args, **kwargs):
        if Path(path).name == saving:
            if point == "before-data":
                _die()
            armed["on"] = True  # the forked writers inherit it
        try:
            return real_save(sharded, path, *args, **kwargs)
        finally:
            armed["on"] = False

    real_fsync = os.fsync

    def fsync(fd):
        if point == "in-shard" and armed["on"] and os.getppid() != 1 and os.fstat(fd).st_size > 1:
            os.ftruncate(fd, os.fstat(fd).st_size // 2)  # what a kill half-way through the write leaves
            _die()
        real_fsync(fd)
        if point == "mid-data" and armed["on"] and os.getppid() != 1:
            if not orphan:
                _die()
            os.kill(os.getppid(), signal.SIGKILL)  # the trainer only: this writer lives on
            Path(os.environ["MM1_ORPHAN_PIDFILE"]).write_text(f"{os.getpid()}\n")
            for _ in range(40):  # a slow writer: keeps writing into its (now orphaned) file
                os.write(fd, b"\0" * 4096)
                time.sleep(0.1)
            os._exit(0)  # its results have no reader any more

    real_torch_save = state.torch.save

    def torch_save(obj, f, *args, **kwargs):
        if point == "before-rng" and Path(str(f)).parent.parent.name == saving:
            _die()
        return real_torch_save(obj, f, *args, **kwargs)

    real_rename = Path.rename

    def rename(self, target):
        if point == "before-rename" and self.name == saving and re.fullmatch(r"step_\d+", Path(target).name):
            _die()
        return real_rename(self, target)

    real_write_text = state.atomic.write_text

    def write_text(path, text):
        if point == "before-latest" and Path(path).name == state.LATEST and text.strip() == saving[: -len(".partial")]:
            _die()
        return real_write_text(path, text)

    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        name, p = Path(path).name, Path(path)
        if p.is_dir() and any(p.iterdir()):
            if point == "mid-prune" and re.fullmatch(r"step_\d+(\.deleting)?", name) and name != saving:
                _delete_half_then_die(p)
            if point == "final-swap" and re.fullmatch(r"checkpoint(\.deleting)?", name):
                _delete_half_then_die(p)
        return real_rmtree(path, *args, **kwargs)

    state.dist_checkpointing.save = save
    os.fsync = fsync
    state.torch.save = torch_save
    Path.rename = rename
    state.atomic.write_text = write_text
    shutil.rmtree = rmtree
    assert checkpoint.shutil is shutil and state.shutil is shutil


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kill-at", choices=POINTS, required=True)
    p.add_argument("--step", type=int, default=3, help="the checkpoint step whose save is killed")
    p.add_argument("--orphan", action="store_true", help="mid-data: kill the trainer only; its writer lives on")
    p.add_argument("mm1", nargs=argparse.REMAINDER, help="-- then the mm1 arguments")
    args = p.parse_args()
    if os.getpgid(0) != os.getpid():  # the kill goes to the process group: it must be ours alone
        p.error("run me as the leader of a process group of my own (subprocess: start_new_session=True)")
    plant(args.kill_at, args.step, args.orphan)
    from mm1.cli import main as mm1

    return mm1([a for a in args.mm1 if a != "--"] if args.mm1[:1] == ["--"] else args.mm1)


if __name__ == "__main__":
    sys.exit(main())
