"""One writer per stage output folder: ``with hold(out):`` or a second run on the same ``--out`` fails at once.

The lock is an OS lock (``fcntl.flock``) on ``.<name>.lock`` beside the folder (not inside it: a
stage may swap its folder by rename, and DVC hashes what is inside). The kernel drops it when the
holder dies, ``kill -9`` included, so no stale lock is ever left to clear by hand. The lock file
names its holder (pid, host, start time, command) for the refusal message; it is never deleted
(deleting a lock file lets two processes lock two different files of one name).

One job, one holder: the ``mm1`` launcher that starts torchrun or srun (:mod:`mm1.parallel.launch`)
holds the lock and names it in ``MM1_OUT_LOCK`` for its ranks, which then take none; ranks started
by a launcher that is not mm1's (a bare torchrun or srun) leave it to rank 0. Processes forked
while the lock is held (megatron's checkpoint writers, loader workers) close their copy of it, so a
writer orphaned by a killed trainer does not keep the folder locked.

A folder that several runs share, each writing its own files (results/figures: tiny_study.*,
<fig>.*, lessons.*, power.*), is locked per artifact: ``hold(out, name)`` locks
``.<folder>.<name>.lock``, so figure jobs run side by side and two runs of one figure do not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HELD_ENV = "MM1_OUT_LOCK"  # set by the mm1 launcher for its ranks: the lock file it holds for them
_held: dict[Path, int] = {}  # lock file -> descriptor, held by this process (a forked child closes them)


class OutputBusy(ValueError):
    """Another live process holds the folder's lock (a user error: the CLI prints its one line)."""


def _close_held_in_child() -> None:
    for fd in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def lock_path(out: Path, name: str | None = None) -> Path:
    """The lock file of output folder ``out`` (``<parent>/.<folder>.lock``), or of the artifact
    ``name`` that a run writes into a shared folder (``<parent>/.<folder>.<name>.lock``)."""
    out = Path(os.path.abspath(out))
    return out.parent / (f".{out.name}.{name}.lock" if name else f".{out.name}.lock")


def job_rank() -> int:
    """This process's rank in a job started by torchrun (RANK) or srun (SLURM_PROCID); 0 alone."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _holder(fd: int) -> str:
    """What the holder wrote into the lock file (it may be writing it this instant: read again)."""
    for _ in range(50):
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "a process that has not yet written its name"


def _acquire(path: Path, out: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
        os.close(fd)
        if holder is None:
            raise
        raise OutputBusy(
            f"{out} is in use by another mm1 run ({holder}; lock {path}); "
            "wait for it to end, stop it, or choose another --out"
        ) from None
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def hold(out: Path, name: str | None = None) -> Iterator[Path | None]:
    """Hold ``out``'s lock for the block (yield its path), or raise :class:`OutputBusy` naming the holder.

    A no-op (yield None) where this process holds it already (a stage's CLI and its library call), in
    a rank whose mm1 launcher holds it for the job, and in ranks other than 0 of a job started by
    another launcher.
    """
    path = lock_path(out, name)
    if path in _held or os.environ.get(HELD_ENV) == str(path) or job_rank() != 0:
        yield None
        return
    fd = _acquire(path, Path(out))
    _held[path] = fd
    try:
        yield path
    finally:
        del _held[path]
        os.close(fd)  # the kernel drops the lock with the last descriptor
