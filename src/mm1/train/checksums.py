"""Checksums of checkpoint folders: the sha256 of every file, recorded when the folder is written and
checked before anything of it is loaded.

A flipped byte in a shard changes a weight and nothing else notices: megatron reads the bytes it is
given. :func:`seal` records every file of a finished checkpoint folder in ``checksums.json`` (size and
sha256), written atomically into the folder before it takes its final name (so a folder that looks
whole holds its manifest); :func:`check` compares the folder with it and raises
:class:`CheckpointChecksumError` naming the first file that is missing, unrecorded, of another size or of
other contents.

Hidden files other than DCP's ``.metadata`` are neither recorded nor checked: tools leave markers
there after the write (Snakemake's ``.snakemake_timestamp`` in every ``directory()`` output) and no
loader reads them. A folder without ``checksums.json`` (written before mm1 recorded checksums) is
refused, with the command that records its checksums as they are for a user who trusts it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mm1 import atomic

MANIFEST = "checksums.json"
FORMAT = 1
_BLOCK = 1 << 20


class CheckpointChecksumError(ValueError):
    """A checkpoint folder is not as it was written: ``file`` is the first file found changed (or the
    folder, or its manifest)."""

    def __init__(self, file: Path | str, message: str) -> None:
        self.file = str(file)
        super().__init__(f"{file}: {message}")


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (hashlib releases the GIL: threads hash in parallel)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def recorded_files(folder: Path) -> list[str]:
    """The files of ``folder`` that a manifest records, as sorted POSIX paths relative to it."""
    folder = Path(folder)
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        hidden = any(part.startswith(".") and part != ".metadata" for part in rel.split("/"))
        if rel != MANIFEST and not hidden and (p.is_file() or p.is_symlink()):
            out.append(rel)
    return sorted(out)


def _hash_all(folder: Path, names: list[str]) -> list[str]:
    if len(names) <= 1:
        return [sha256_file(folder / n) for n in names]
    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1, 8)) as pool:
        return list(pool.map(lambda n: sha256_file(folder / n), names))


def seal(folder: Path) -> Path:
    """Record the size and sha256 of every file of ``folder`` in ``folder/checksums.json`` (atomically)."""
    folder = Path(folder)
    names = recorded_files(folder)
    digests = _hash_all(folder, names)
    files = {n: {"bytes": (folder / n).stat().st_size, "sha256": d} for n, d in zip(names, digests, strict=True)}
    text = json.dumps({"format": FORMAT, "algorithm": "sha256", "files": files}, indent=1, sort_keys=True)
    return atomic.write_text(folder / MANIFEST, text + "\n")


def what_to_do(folder: Path) -> str:
    return (
        f"nothing of it was loaded; restore {folder} from a good copy, or delete it and rerun the stage that "
        "writes it (a training run resumes from its newest intact checkpoint)"
    )


def recorded_checksums(folder: Path) -> dict[str, dict]:
    """{relative path: {"bytes", "sha256"}} recorded in ``folder/checksums.json``."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointChecksumError(
            folder,
            f"no {MANIFEST}: this checkpoint was written before mm1 recorded checksums (or not by mm1), so its "
            "files cannot be checked; rerun the stage that writes it, or, if you trust its files as they are, "
            f"record them with: python -c \"from mm1.train.checksums import seal; seal('{folder}')\"",
        )
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not all(
            isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("bytes"), int)
            for e in files.values()
        ):
            raise ValueError(f"format {manifest.get('format')!r} or entries not as mm1 writes them")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise CheckpointChecksumError(
            path, f"not a readable checksum manifest ({exc}); it is corrupt; {what_to_do(folder)}"
        ) from None
    return files


def check(folder: Path, share: tuple[int, int] = (0, 1), select: Callable[[str], bool] = lambda name: True) -> None:
    """Raise :class:`CheckpointChecksumError` unless ``folder`` holds exactly the files its manifest records, each
    of the recorded size, and (of those ``select`` picks) with the recorded sha256.

    ``share=(i, n)`` hashes only every n-th of those files from the i-th: the n ranks of a job, each
    with its own ``i``, hash the folder once between them."""
    folder = Path(folder)
    recorded = recorded_checksums(folder)
    present = recorded_files(folder)
    for name in sorted(set(recorded) - set(present)):
        raise CheckpointChecksumError(
            folder / name, f"missing, but recorded when the checkpoint was saved; {what_to_do(folder)}"
        )
    for name in sorted(set(present) - set(recorded)):
        raise CheckpointChecksumError(
            folder / name,
            f"not one of the files recorded when the checkpoint was saved ({folder / MANIFEST}); remove it if "
            f"you put it there, else {what_to_do(folder)}",
        )
    for name in present:
        size, want = (folder / name).stat().st_size, recorded[name]["bytes"]
        if size != want:
            raise CheckpointChecksumError(
                folder / name,
                f"{size} bytes, but {want} were recorded when the checkpoint was saved; {what_to_do(folder)}",
            )
    names = [n for n in present if select(n)][share[0] :: share[1]]
    for name, got in zip(names, _hash_all(folder, names), strict=True):
        if got != recorded[name]["sha256"]:
            raise CheckpointChecksumError(
                folder / name,
                f"its contents changed after the checkpoint was saved (sha256 {got[:16]}..., recorded "
                f"{recorded[name]['sha256'][:16]}... in {MANIFEST}): it is corrupt or was edited; {what_to_do(folder)}",
            )
