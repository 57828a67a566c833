"""Checkpoints are data, never code: :func:`verify` checks every pickled piece of a checkpoint folder
before megatron's loader reads it.

A checkpoint from elsewhere (a download, a shared folder, another user's run) must not be able to
run code when it is loaded. megatron's ``dist_checkpointing`` does not promise that: under
megatron-core 0.16.1 and torch 2.13 it unpickles

* ``.metadata`` with plain ``pickle.load`` (``torch.distributed.checkpoint.filesystem.FileSystemReader
  .read_metadata``): anything in it runs at ``load_tensors_metadata``, the first call of a load;
* every bytes item (megatron's ShardedObjects, e.g. each ``*._extra_state``) with
  ``torch.load(weights_only=False)`` (``torch.distributed.checkpoint.default_planner.DefaultLoadPlanner
  .load_bytes``);
* ``common.pt`` with ``torch.load()``: weights-only, unless ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set.

:func:`verify` reads each of those first: ``.metadata`` with an unpickler that knows only the classes
torch's checkpoint metadata is made of, every other pickle (bytes items, ``*.pt``) with
``torch.load(weights_only=True)``, whose unpickler refuses every global that is not tensor data. A
refused piece raises :class:`UnsafeCheckpointError` naming the file and the global, before anything
of the checkpoint is loaded. Every loader of checkpoints in mm1 calls it first
(:func:`mm1.train.checkpoint.load_into`, :func:`mm1.train.state.resumable`, :func:`mm1.train.state.load`).
Tensor items need no check: torch reads them with ``weights_only=True`` itself.

:func:`verify` also checks every file against the checkpoint's sha256 manifest
(:mod:`mm1.train.checksums`) before any of this, so a file changed after the save (a flipped bit,
a truncated copy) is refused naming the file, never loaded.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch

from mm1.train import checksums

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

_DCP = "torch.distributed.checkpoint"
# Every global a DCP ``.metadata`` pickle holds (checked on the checkpoints mm1 writes: model, resume
# with either optimizer, MoE), besides the torch dtypes.
METADATA_GLOBALS = frozenset(
    {
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        *(
            (f"{_DCP}.metadata", name)
            for name in (
                "Metadata",
                "TensorStorageMetadata",
                "BytesStorageMetadata",
                "ChunkStorageMetadata",
                "TensorProperties",
                "MetadataIndex",
                "StorageMeta",
                "_MEM_FORMAT_ENCODING",
            )
        ),
        *((f"{_DCP}.planner", name) for name in ("SavePlan", "WriteItem", "WriteItemType", "TensorWriteData")),
        (f"{_DCP}.filesystem", "_StorageInfo"),
    }
)
# The RNG files of mm1 before RNG format 2 (mm1.train.state) held numpy's legacy RNG state, an
# ndarray: these globals, and no others, are let through in ``rng/*.pt``. Such a file is never
# unpickled: ``torch.load(weights_only=True)`` refuses it and the resumed run restarts its RNG
# streams from the seed.
LEGACY_RNG_GLOBALS = frozenset(
    {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}
)
RNG_DIR = "rng"


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds something that is not data (a pickled callable, a link out of its folder).

    ``file`` is the offending file, ``refused`` the globals (``module.name``) it would unpickle."""

    def __init__(self, file: Path | str, refused: Iterable[str] = (), why: str | None = None) -> None:
        self.file, self.refused = str(file), tuple(refused)
        why = why or f"it holds pickled {', '.join(self.refused)}: code, not checkpoint data"
        super().__init__(
            f"{file}: refused to load this checkpoint: {why}. Nothing of it was loaded (loading it could "
            "run arbitrary code); load only checkpoints from a source you trust, or save it again with mm1"
        )


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles a DCP ``.metadata`` file: the metadata classes and torch dtypes, nothing else."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in METADATA_GLOBALS or (module == "torch" and isinstance(vars(torch).get(name), torch.dtype)):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(self.path, [f"{module}.{name}"])


def read_metadata(path: Path) -> Metadata:
    """The DCP metadata in ``path``, unpickled by :class:`_MetadataUnpickler`."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            metadata = _MetadataUnpickler(f, path).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"{path}: not readable checkpoint metadata ({type(exc).__name__}: {exc})") from None
    if not isinstance(metadata, Metadata):
        raise ValueError(f"{path}: not checkpoint metadata but a pickled {type(metadata).__name__}")
    return metadata


def _check_torch(data: bytes | Path, where: str, allow: frozenset[str] = frozenset()) -> None:
    """Raise :class:`UnsafeCheckpointError` unless ``data`` (a ``torch.save`` file or its bytes) loads
    with ``weights_only=True``; a file whose only other globals are in ``allow`` passes unloaded."""

    def stream():
        return io.BytesIO(data) if isinstance(data, bytes) else Path(data).open("rb")

    try:
        with stream() as f:  # lists the globals without unpickling anything
            unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(f))
    except Exception:  # noqa: BLE001  not a zip-format torch file: torch.load below says what it is
        unsafe = set()
    if unsafe - allow:
        raise UnsafeCheckpointError(where, sorted(unsafe - allow))
    if unsafe:
        return
    try:
        with stream() as f:
            torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.findall(r"GLOBAL (\S+) was not an allowed global", str(exc))
        if refused:
            raise UnsafeCheckpointError(where, refused) from None
        raise ValueError(f"{where}: not a readable torch file ({str(exc).splitlines()[-1]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"{where}: not a readable torch file ({type(exc).__name__}: {exc})") from None


def _check_items(ckpt: Path, meta_path: Path, metadata: Metadata) -> None:
    """Every item stays inside ``ckpt`` and is stored plainly; every bytes item is tensor data."""
    pickled = {fqn for fqn, m in metadata.state_dict_metadata.items() if isinstance(m, BytesStorageMetadata)}
    for index, info in (metadata.storage_data or {}).items():
        fqn = getattr(index, "fqn", index)
        if not isinstance(info, _StorageInfo) or not isinstance(info.relative_path, str):
            raise ValueError(f"{meta_path}: item {fqn}: storage info {info!r} is not a file slice")
        if Path(info.relative_path).name != info.relative_path or info.relative_path in ("", ".", ".."):
            raise UnsafeCheckpointError(
                meta_path, why=f"item {fqn} is stored at {info.relative_path!r}, outside the checkpoint folder"
            )
        if info.transform_descriptors:
            raise UnsafeCheckpointError(
                meta_path,
                why=f"item {fqn} is stored through transforms {list(info.transform_descriptors)}, "
                "which mm1 never writes",
            )
        if fqn in pickled:
            file = ckpt / info.relative_path
            with file.open("rb") as f:
                f.seek(int(info.offset))
                data = f.read(int(info.length))
            _check_torch(data, f"{file} (item {fqn})")


def verify(ckpt: Path, *, rank: int | None = None, world: int = 1) -> None:
    """Raise if loading the checkpoint folder ``ckpt`` could run code or read anything but what was saved.

    Refuses links out of the folder (:class:`UnsafeCheckpointError`), then checks every file against
    the sha256 manifest written with the checkpoint (:func:`mm1.train.checksums.check`, raising
    :class:`~mm1.train.checksums.CheckpointChecksumError`), then every ``*.metadata`` (DCP's, with a
    restricted unpickler), every bytes item it lists and every ``*.pt`` (``torch.load(
    weights_only=True)``), and items stored outside the folder. With ``rank``, of the per-rank RNG
    files ``rng/rank_<N>.pt`` only that rank's is unpickled (the one it loads; every rank reading
    every rank's file would be N² reads), and the rank hashes only its share of the files
    (1/``world``): :func:`verify_on_every_rank` joins the verdicts. A folder that does not exist
    passes: the loader then names what is missing.
    """
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        return
    root = ckpt.resolve()
    files = sorted(ckpt.rglob("*"))
    for p in files:
        if p.is_symlink() and not p.resolve().is_relative_to(root):
            raise UnsafeCheckpointError(p, why=f"it is a link out of the checkpoint folder, to {p.resolve()}")
    checksums.check(ckpt, share=(rank, world) if rank is not None and world > 1 else (0, 1))
    for p in files:
        if p.name.endswith(".metadata") and p.is_file():
            _check_items(ckpt, p, read_metadata(p))
    for p in files:
        if p.suffix != ".pt" or not p.is_file():
            continue
        in_rng = p.parent == ckpt / RNG_DIR
        if in_rng and rank is not None and p.name != f"rank_{rank:05d}.pt":
            continue
        _check_torch(p, str(p), allow=LEGACY_RNG_GLOBALS if in_rng else frozenset())


# The verdicts all-reduced (MAX) by verify_on_every_rank: a rank that found nothing wrong raises the worst.
_UNREADABLE, _CHANGED, _UNSAFE = 1, 2, 3


def _verdict(failed: Exception | None) -> int:
    if failed is None:
        return 0
    if isinstance(failed, UnsafeCheckpointError):
        return _UNSAFE
    return _CHANGED if isinstance(failed, checksums.CheckpointChecksumError) else _UNREADABLE


def verify_on_every_rank(ckpt: Path) -> None:
    """:func:`verify` on every rank of the job (a collective), each reading its own RNG file and hashing
    its share of the files: when one rank refuses (or cannot read) its part, every rank raises, and
    none is left waiting for the others."""
    dist = torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (None, 1)
    failed: Exception | None = None
    try:
        verify(ckpt, rank=rank, world=world)
    except (ValueError, OSError) as exc:  # UnsafeCheckpointError and CheckpointChecksumError are ValueErrors
        failed = exc
    if dist:
        flag = torch.tensor([_verdict(failed)])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if failed is None and flag.item() == _UNSAFE:
            raise UnsafeCheckpointError(ckpt, why="another rank refused its part of it (its message names the file)")
        if failed is None and flag.item() == _CHANGED:
            raise checksums.CheckpointChecksumError(
                ckpt,
                "another rank found a file of it changed since the save (its message names the file); "
                + checksums.what_to_do(ckpt),
            )
        if failed is None and flag.item():
            raise ValueError(f"{ckpt}: another rank could not read its part of this checkpoint (its message says why)")
    if failed is not None:
        raise failed
