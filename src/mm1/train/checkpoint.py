"""Model checkpoints with megatron's dist_checkpointing, written atomically.

A checkpoint folder holds the sharded weights (any TP/PP layout can load them),
``model.json`` (the model config and tokenizer facts needed to rebuild the model) and
``checksums.json``, the sha256 of every file, recorded before the folder takes its name and checked
before anything of it is loaded (:mod:`mm1.train.checksums`).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import queue
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from mm1.config import ModelConfig
from mm1.models.encoder import interpolate_position_embeddings
from mm1.train import checksums, safe_load

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from megatron.core.models.vision.clip_vit_model import CLIPViTModel
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

META = "model.json"


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def write_results_in_process() -> None:
    """Let megatron's checkpoint writer hand its results back through an in-process queue.

    Left alone, the writer makes its results queue in a *spawned* multiprocessing Manager, there for
    async saves that finish in another process. Every save here is synchronous (the write runs in
    the saving process), so an ordinary queue carries the same results. The Manager cost 3.4 s per
    process (a fresh interpreter re-importing the entry point; ``cProfile`` of a 40-step ``mm1
    train``), and, as a separate process, was killed by preemption signals sent to the group.
    """
    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


PARTIAL = ".partial"  # <folder>.partial: being written; never read
DELETING = ".deleting"  # <folder>.deleting: being removed; never read


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, read-only file system); nothing earlier
    was touched. Not a preemption: ``mm1`` exits 1, so a scheduler does not requeue it forever."""


def discard(path: Path) -> None:
    """Delete a checkpoint folder so that a kill half-way never leaves it looking whole: rename it to
    ``<name>.deleting`` first (readers ignore that name; the next save sweeps leftovers)."""
    path = Path(path)
    aside = path.with_name(path.name + DELETING)
    shutil.rmtree(aside, ignore_errors=True)
    try:
        path.rename(aside)
    except FileNotFoundError:
        return
    except OSError:  # the old aside is not gone: a writer of a killed run may still be writing into it
        aside = path.with_name(f"{path.name}.{os.getpid()}{DELETING}")
        path.rename(aside)
    shutil.rmtree(aside, ignore_errors=True)


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError (ENOSPC, EDQUOT, EROFS, ...) behind ``exc``: its causes, or the failures that
    torch's CheckpointException gathered from each rank (pickled on the way from megatron's writer
    processes, where only the message "[Errno 28] No space left on device" survives)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if isinstance(e, tuple):  # torch's wrapped exception: (exception, traceback summary)
            todo += [x for x in e if isinstance(x, BaseException)]
            continue
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        if found := re.search(r"\[Errno (\d+)\] ([^:'\"\]\n]+)", str(e)):
            return OSError(int(found[1]), found[2].strip())
        todo += [e.__cause__, e.__context__, *getattr(e, "failures", {}).values()]
    return None


def _any_failed(failed: BaseException | None) -> bool:
    """Whether ``failed`` is set on any rank (a collective)."""
    flag = torch.tensor([int(failed is not None)])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def agree(failed: BaseException | None, tmp: Path, what: str, intact: str) -> None:
    """Every rank calls this after writing its part into ``tmp``. If every rank wrote its part, rank 0
    records the sha256 of every file in ``tmp/checksums.json`` (:func:`mm1.train.checksums.seal`:
    part of the folder before it is renamed to its final name). If any rank failed (or the manifest
    could not be written), rank 0 removes ``tmp`` and every rank raises (no rank is left waiting for
    the others at a barrier).

    A write error (an OSError behind ``failed``, or any failure on a file system left with less than
    ``FULL`` bytes) becomes a :class:`CheckpointWriteError` naming ``what``, the real cause and what
    to do (:func:`_write_error`), with ``intact`` (what the failure left as it was); any other failure
    is raised as it is."""
    if not _any_failed(failed):
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            try:
                checksums.seal(tmp)
            except Exception as exc:  # noqa: BLE001  every rank must hear of it before anyone raises
                failed = exc
        if not _any_failed(failed):
            return
    free = _free_bytes(tmp.parent)
    full = free is not None and free < FULL  # before the partial folder goes: what the write ran into
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        discard(tmp)
    _barrier()
    error = _os_error(failed)
    if failed is not None and error is None:
        if not full:
            raise failed  # not a write error: a bug, shown as it is
        # torch's serializer reports a short write on a full disk as its own error ("unexpected pos")
        error = OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (the write failed with: {_last_line(failed)})")
    raise CheckpointWriteError(f"could not write {what} to {tmp}: {_write_error(error, tmp, intact)}") from failed


FULL = 1 << 20  # a file system with less free space than this is full for a checkpoint
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _write_error(error: OSError | None, tmp: Path, intact: str) -> str:
    """What went wrong writing ``tmp`` and what to do, for the errno behind it: free space only for a
    full disk or quota, a vanished folder for ENOENT (another process on the same output folder)."""
    if error is None:
        return f"another rank could not write its part (its message says why); {intact}"
    reason = error.strerror or str(error)
    if error.errno in NO_SPACE:
        free = _free_bytes(tmp.parent)
        where = f" ({free / 2**20:.1f} MiB free on the file system of {tmp.parent})" if free is not None else ""
        return f"{reason}{where}; {intact}; free some space (or lower train.keep_last) and run again"
    if error.errno == errno.ENOENT:
        gone = tmp if tmp.parent.is_dir() else tmp.parent
        kept = f"; {intact}" if gone == tmp else ""  # with the parent gone, nothing is known of what it held
        return (
            f"{reason}: the folder {gone} disappeared while the checkpoint was written: another process removed "
            f"or moved it (another mm1 run on the same --out?){kept}; let one run at a time use an --out, and run again"
        )
    if error.errno in NOT_WRITABLE:
        return f"{reason}; {intact}; make {tmp.parent} writable (or choose another --out) and run again"
    return f"{reason}; {intact}; fix the cause and run again"


def _free_bytes(folder: Path) -> float | None:
    """Free bytes on the file system of ``folder``; None when that cannot be known (e.g. it is gone)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def save(model: torch.nn.Module, meta: dict[str, Any], out: Path) -> Path:
    """Save ``model`` (every rank calls this) to ``out``; readers never see a half-written folder.

    The folder is written as ``<out>.partial``; the old ``out`` (if any) is renamed to
    ``<out>.deleting`` before the new one takes its name and is deleted after, so a kill at any
    point leaves the old checkpoint or the new one under ``out`` (or, between the two renames,
    none), never a half-deleted one that still looks whole. ``<out>.partial`` gets its
    ``checksums.json`` (:func:`agree`) before it is renamed: every folder named ``out`` carries one.
    """
    out = Path(out)
    tmp = out.with_name(out.name + PARTIAL)
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    if rank0:
        discard(tmp)
        shutil.rmtree(out.with_name(out.name + DELETING), ignore_errors=True)  # a run killed during the swap
        tmp.mkdir(parents=True, exist_ok=True)
    _barrier()
    write_results_in_process()
    failed = None
    try:
        dist_checkpointing.save(model.sharded_state_dict(), str(tmp))
        if rank0:
            (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    except (Exception, CheckpointException) as exc:
        failed = exc
    kept = f"the previous {out} is intact" if (out / META).is_file() else f"{out} was not written"
    agree(failed, tmp, "the model checkpoint", kept)
    if rank0:
        aside = out.with_name(out.name + DELETING)
        if out.exists():
            out.rename(aside)
        tmp.rename(out)  # between the two renames there is no ``out``, never a half of one
        shutil.rmtree(aside, ignore_errors=True)
    _barrier()
    return out


def _refuse_unfinished(ckpt: Path) -> None:
    if ckpt.name.endswith((PARTIAL, DELETING)):
        whole = re.sub(rf"(\.\d+)?({re.escape(PARTIAL)}|{re.escape(DELETING)})$", "", ckpt.name)
        raise ValueError(
            f"{ckpt} is a checkpoint folder being written or deleted (a run was killed there); "
            f"load {ckpt.with_name(whole)} or rerun the stage that writes it"
        )


def read_meta(ckpt: Path) -> dict[str, Any]:
    """The checkpoint's ``model.json`` (its sha256 checked against the checkpoint's manifest), with
    ``model`` as a :class:`ModelConfig`."""
    _refuse_unfinished(Path(ckpt))
    path = Path(ckpt) / META
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt} is not an mm1 checkpoint (no {META}); run the train stage first")
    checksums.check(Path(ckpt), select=lambda name: name == META)
    meta = json.loads(path.read_text())
    meta["model"] = ModelConfig.model_validate(meta["model"])
    return meta


def _in_parts(key: str, parts: tuple[str, ...] | None) -> bool:
    return parts is None or any(key == p or key.startswith(p + ".") for p in parts)


def load_into(model: torch.nn.Module, ckpt: Path, parts: tuple[str, ...] | None = None) -> None:
    """Load weights saved under any parallel layout into ``model`` (built for this layout).

    ``parts`` loads only the named child modules (e.g. ``("encoder",)`` from a CLIP/AIM
    checkpoint, ``("language_model",)`` from a text-only LLM); the rest keep their weights.
    A ViT inside ``model`` built for another image size than the checkpoint's (``model.json``)
    gets the saved position embeddings resized to its patch grid
    (:func:`~mm1.models.encoder.interpolate_position_embeddings`). Every other tensor must have
    its saved shape, or a ``ValueError`` names each one that does not, with both shapes.
    """
    ckpt = Path(ckpt)
    safe_load.verify_on_every_rank(ckpt)  # checksums and pickles, before megatron reads anything of it
    saved = dist_checkpointing.load_tensors_metadata(str(ckpt))  # ShardedTensor key -> global shape
    sharded = {k: v for k, v in model.sharded_state_dict().items() if _in_parts(k, parts)}
    if not sharded:
        raise ValueError(f"the model has no part named {parts}; its parts: {[n for n, _ in model.named_children()]}")
    resized = _resized_position_embeddings(model, sharded, saved, ckpt)
    _check_shapes(model, saved, skip={sharded[name].key for name in resized}, parts=parts)
    for name, (saved_shape, _, _) in resized.items():
        # Ask for the saved shape instead. The ViT's position embeddings are replicated over TP
        # (a plain torch.nn.Embedding), so the entry is the whole tensor on every rank.
        target = sharded[name]
        sharded[name] = dataclasses.replace(
            target,
            data=torch.empty(saved_shape, dtype=target.dtype, device=target.data.device),
            local_shape=saved_shape,
            global_shape=saved_shape,
        )
    state = dist_checkpointing.load(sharded, str(ckpt))
    for name, (_, class_token, grid) in resized.items():
        state[name] = interpolate_position_embeddings(state[name], class_token, grid)
    missing, unexpected = model.load_state_dict(state, strict=parts is None)
    if unexpected or any(_in_parts(k, parts) and not k.endswith("_extra_state") for k in missing):
        raise ValueError(f"{ckpt}: loading {parts} left missing {missing} / unexpected {unexpected} weights")


def _resized_position_embeddings(
    model: torch.nn.Module, sharded: dict, saved: dict, ckpt: Path
) -> dict[str, tuple[tuple[int, ...], bool, int]]:
    """{state-dict key: (saved shape, class_token, the model's grid)} for each ViT in ``model``
    whose position embeddings the checkpoint holds for another image size."""
    out = {}
    for module_name, vit in model.named_modules():
        if not isinstance(vit, CLIPViTModel):
            continue
        name = f"{module_name}.position_embeddings.weight".lstrip(".")
        if name not in sharded:  # a part that is not loaded
            continue
        key = sharded[name].key
        want = tuple(sharded[name].global_shape)
        have = tuple(saved[key].global_shape) if key in saved else want
        if have == want:
            continue
        enc = read_meta(ckpt)["model"].encoder
        class_token = vit.add_class_token
        implied = (class_token * vit.class_token_len + enc.grid**2, want[1])
        if have != implied or enc.image_size == vit.img_h or (class_token and vit.class_token_len != 1):
            raise ValueError(
                f"{key}: the checkpoint holds shape {have}, the model has {want}; resizing needs a "
                f"checkpoint at another image size with shape {implied} (its model.json: "
                f"image_size={enc.image_size}, patch_size={enc.patch_size}) and at most one class token"
            )
        out[name] = (have, class_token, vit.num_patches_per_dim_h)
    return out


def _check_shapes(model: torch.nn.Module, saved: dict, skip: set[str], parts: tuple[str, ...] | None) -> None:
    """Raise a ValueError naming every tensor whose saved global shape differs from the model's."""
    sharded = {k: v for k, v in model.sharded_state_dict().items() if _in_parts(k, parts)}
    apply_factories(sharded)  # e.g. SwiGLU's fc1, saved as two halves
    wrong, missing = set(), set()
    for t in nested_values(sharded):
        if not isinstance(t, ShardedTensor) or t.key in skip:
            continue
        if t.key not in saved:
            missing.add(t.key)
        elif tuple(saved[t.key].global_shape) != tuple(t.global_shape):
            wrong.add(f"{t.key}: checkpoint {tuple(saved[t.key].global_shape)}, model {tuple(t.global_shape)}")
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} tensor(s) of the model: {', '.join(sorted(missing))}")
    if wrong:
        raise ValueError("the checkpoint and the model disagree on tensor shapes:\n  " + "\n  ".join(sorted(wrong)))
