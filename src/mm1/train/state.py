"""Resumable training state: everything a run needs to continue exactly where it stopped.

    <root>/                       (the train stage's ``resume/`` folder)
      latest                      the name of the newest complete checkpoint, e.g. "step_000120"
      step_000120/                one complete checkpoint (written as step_000120.partial, renamed
                                  when every rank is done: a folder without .partial is complete;
                                  old ones are renamed to step_N.deleting before they are removed)
        .metadata, *.distcp       model + optimizer (megatron dist_checkpointing: any layout loads it)
        common.pt                 LR-scheduler state and the step
        rng/rank_00000.pt         RNG states of each rank (torch, CUDA, megatron's tracker, python, numpy,
                                  and the stage's own generators)
        metrics.csv               the metrics rows of steps 1..120
        state.json                what the run was: step, model and train config, input hashes, layout

The data position is the step itself (step t reads sequences [t*G, (t+1)*G) of the packed file), so
model, optimizer, scheduler, RNG and step are the whole state. Only the newest ``keep_last``
complete checkpoints are kept. Every rank resumes the step rank 0 sees as the newest
(:func:`chosen_by_rank0`). A checkpoint of another model, another schedule or other inputs is
refused (:class:`IncompatibleCheckpoint` names the differing fields), never silently resumed.
"""

from __future__ import annotations

import datetime
import json
import pickle
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from mm1 import atomic
from mm1.parallel.supervise import LATEST  # the pointer's name: the launcher reads it too
from mm1.train import checksums, safe_load
from mm1.train.checkpoint import (  # noqa: F401  (CheckpointWriteError: raised by save, re-exported)
    DELETING,
    CheckpointWriteError,
    agree,
    discard,
    write_results_in_process,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import dist_checkpointing, tensor_parallel
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

PARTIAL = ".partial"
STATE = "state.json"
METRICS = "metrics.csv"
RNG = "rng"
_STEP_DIR = re.compile(r"^step_(\d+)$")
# Layout-independent optimizer state (plain and distributed optimizer alike): a checkpoint of one
# TP/PP/DP layout resumes in another.
OPTIMIZER_FORMAT = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}
# train.* fields that may change between the run that saved a checkpoint and the one resuming it.
RESUMABLE_TRAIN_CHANGES = frozenset(
    {
        "resume",
        "save_interval",
        "save_every_minutes",
        "stop_minutes_before_limit",
        "save_at_end",
        "keep_last",
        "log_interval",
        "micro_batch_size",
    }
)


class IncompatibleCheckpoint(ValueError):
    """The checkpoint to resume was saved by a different model, schedule or inputs."""


@dataclass(frozen=True)
class Restored:
    step: int
    rows: list[dict]
    path: Path


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def complete(root: Path) -> list[Path]:
    """The complete checkpoints under ``root``, oldest first: folders named ``step_N`` exactly
    (``step_N.partial``, being written, and ``step_N.deleting``, being removed, never are)."""
    found = [(int(m[1]), p) for p in Path(root).glob("step_*") if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None.

    Folders decide, not the ``latest`` pointer (written for people and tools): a run that died
    between the rename and the pointer update still resumes from its newest checkpoint.
    """
    done = complete(root)
    return done[-1] if done else None


class CheckpointNotVisible(RuntimeError):
    """Rank 0 chose a checkpoint to resume that another rank does not see (yet)."""


def chosen_by_rank0(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` as rank 0 sees it, the same on every rank (a
    collective): on a shared filesystem whose metadata lags, ranks listing the folder themselves could
    pick different steps. Every rank then checks that it sees that checkpoint (its ``state.json`` and
    checksum manifest, the files written last); if any does not, every rank raises
    :class:`CheckpointNotVisible` naming them."""
    newest = latest(root) if _rank() == 0 else None
    step = [int(_STEP_DIR.match(newest.name)[1]) if newest is not None else None]
    if not torch.distributed.is_initialized():
        return newest
    torch.distributed.broadcast_object_list(step, src=0)
    if step[0] is None:
        return None
    chosen = step_dir(root, step[0])
    seen: list[bool] = [False] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(seen, all((chosen / name).is_file() for name in (STATE, checksums.MANIFEST)))
    if not all(seen):
        blind = ", ".join(str(r) for r, ok in enumerate(seen) if not ok)
        raise CheckpointNotVisible(
            f"cannot resume: rank(s) {blind} do not see {chosen}/{STATE}, the newest checkpoint rank 0 sees; "
            "a shared filesystem may still be syncing: run again once every node lists it"
        )
    return chosen


def resumable(root: Path, facts: dict) -> Path | None:
    """The newest complete checkpoint under ``root`` (rank 0's choice, :func:`chosen_by_rank0`) if
    this run (``facts``) may continue from it.

    One saved by another run -- the model, schedule or inputs changed, which is why Snakemake
    reruns the stage -- is not resumed and not deleted: ``root`` moves aside to
    ``<root>.stale-<UTC time>`` with a message naming what differs, and the run starts over.
    """
    found = chosen_by_rank0(root)
    if found is None:
        return None
    safe_load.verify_on_every_rank(found)  # a checkpoint that holds code is refused, not moved aside
    try:
        check_compatible(json.loads((found / STATE).read_text()), facts, found)
        return found
    except IncompatibleCheckpoint as exc:
        if _rank() == 0:
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
            aside = Path(root).with_name(f"{Path(root).name}.stale-{stamp}")
            Path(root).rename(aside)
            print(f"mm1 train: not resuming: {exc}\nmoved {root} to {aside}; starting over", flush=True)
        _barrier()
        return None


def clear(root: Path) -> None:
    """Start over: remove every checkpoint under ``root`` (rank 0; called by all ranks)."""
    if _rank() == 0:
        shutil.rmtree(root, ignore_errors=True)
    _barrier()


RNG_FORMAT = 2  # 1 (until issue 10): numpy's state as an ndarray, which weights-only loading refuses


def _rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG stream of this rank, in tensors and plain Python values only, so that the file
    loads with ``torch.load(weights_only=True)``: numpy's MT19937 key is an int64 tensor.
    ``generators`` are a stage's own streams (AIM's prefix lengths), by name."""
    numpy = np.random.get_state(legacy=False)
    numpy["state"] = {**numpy["state"], "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64))}
    return {
        "format": RNG_FORMAT,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
        "python": random.getstate(),
        "numpy": numpy,
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def _set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state({**numpy, "state": {**numpy["state"], "key": numpy["state"]["key"].numpy().astype(np.uint32)}})
    saved = state.get("generators", {})
    for name, g in (generators or {}).items():
        if name in saved:
            g.set_state(saved[name])


def _read_rng(path: Path) -> dict[str, Any] | None:
    """The RNG states saved in ``path``; None, with a warning, for a file of RNG format 1 (it holds an
    ndarray, and is never unpickled unsafely to get at it): those streams restart from the seed."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # format 1; safe_load.verify has refused any other global
        state = None
    if isinstance(state, dict) and state.get("format") == RNG_FORMAT:
        return state
    if _rank() == 0:
        warnings.warn(
            f"{path}: RNG states of an older format (before weights-only loading): RNG streams restart "
            "from the seed, so the curve continues correctly but not bit for bit",
            stacklevel=3,
        )
    return None


def _init_distributed_optimizer_state(optimizer) -> None:
    """Give a fresh distributed optimizer the Adam state to load into (megatron's own
    ``init_state_fn`` leaves out ``step``, and ``DistributedOptimizer.state_dict`` needs it)."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(opt, DistributedOptimizer):
            continue
        for group in opt.optimizer.param_groups:
            for p in group["params"]:
                if not opt.optimizer.state[p]:
                    opt.optimizer.state[p].update(
                        exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p), step=torch.tensor(0.0)
                    )


def _load_optimizer(optimizer, loaded: dict) -> None:
    """``optimizer.load_state_dict(loaded)``, with two fixes for megatron 0.16.1's distributed optimizer
    under torch Adam (no Apex/TE): its parameter state is loaded apart (megatron copies every state
    key into it, ``step`` included, which the fully reshardable format does not hold: KeyError), and
    each parameter gets its own ``step`` tensor."""
    opts = getattr(optimizer, "chained_optimizers", [optimizer])
    if not any(isinstance(opt, DistributedOptimizer) for opt in opts):
        optimizer.load_state_dict(loaded)
        return
    parts = [loaded] if len(opts) == 1 else [v for _, v in sorted(loaded.items())]
    for opt, part in zip(opts, parts, strict=True):
        if not isinstance(opt, DistributedOptimizer):
            opt.load_state_dict(part)
            continue
        param_state = part.pop("param_state")
        part.pop("param_state_sharding_type")
        opt.load_state_dict(part)  # param groups and step
        steps = {p: st.pop("step") for p, st in opt.optimizer.state.items() if "step" in st}
        opt.load_parameter_state_from_fully_reshardable(param_state)
        for p, step in steps.items():  # megatron gave every parameter the same step tensor, which
            opt.optimizer.state[p]["step"] = step.clone()  # torch Adam would then increment once per parameter


def _sharded(model: torch.nn.Module, optimizer, is_loading: bool) -> dict:
    if is_loading:
        _init_distributed_optimizer_state(optimizer)
    model_sd = model.sharded_state_dict()
    return {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd, is_loading, metadata=OPTIMIZER_FORMAT),
    }


def save(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    facts: dict,
    rows: list[dict],
    keep_last: int,
    generators: dict[str, torch.Generator] | None = None,
) -> Path:
    """Write the resumable checkpoint of ``step`` (every rank calls this), then keep the last ``keep_last``.

    ``model`` is the unwrapped model (no DDP ``module.`` prefix); ``facts`` describe the run
    (:func:`check_compatible` compares them on resume); ``rows`` are the metrics of steps 1..step;
    ``generators`` are the stage's own RNG streams, saved with the others of the rank.
    A write that fails on any rank (disk full, quota, read-only) removes ``step_N.partial`` and
    raises :class:`CheckpointWriteError` on every rank, naming the step, the folder, the free space
    and the newest complete checkpoint, which it left as it was.
    """
    final = step_dir(root, step)
    tmp = final.with_name(final.name + PARTIAL)
    rank = _rank()
    write_results_in_process()  # no writer helper process for a preemption signal to kill
    if rank == 0:
        # A run killed while saving may have left this folder, and megatron's forked writer
        # processes may still be writing into it: move it aside rather than racing them.
        discard(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
    _barrier()
    failed = None
    try:
        state = _sharded(model, optimizer, is_loading=False)
        state.update(scheduler=scheduler.state_dict(), step=step)
        dist_checkpointing.save(state, str(tmp))
        (tmp / RNG).mkdir(exist_ok=True)
        torch.save(_rng_state(generators), tmp / RNG / f"rank_{rank:05d}.pt")
        if rank == 0:
            pl.DataFrame(rows).write_csv(tmp / METRICS)
            created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            (tmp / STATE).write_text(json.dumps({"step": step, "created": created, **facts}, indent=2) + "\n")
    except (Exception, CheckpointException) as exc:  # ENOSPC and co; every rank hears of it in agree()
        failed = exc
    newest = latest(root)
    intact = f"the newest complete checkpoint {newest} is intact" if newest else "there is no earlier checkpoint"
    agree(failed, tmp, f"checkpoint step {step}", intact)
    if rank == 0:
        discard(final)  # only there when this step is saved again
        tmp.rename(final)  # the moment the checkpoint becomes complete
        _point_latest(root, final)
        for old in complete(root)[:-keep_last]:
            discard(old)  # renamed first: a kill half-way leaves no half-deleted "complete" folder
        for stale in Path(root).glob(f"step_*{PARTIAL}"):  # left by a run that died while saving
            discard(stale)
        for stale in Path(root).glob(f"step_*{DELETING}"):  # left by a run that died while deleting
            shutil.rmtree(stale, ignore_errors=True)
    _barrier()
    return final


def _point_latest(root: Path, final: Path) -> None:
    """Update the ``latest`` pointer (for people and tools; :func:`latest` reads the folders)."""
    try:
        atomic.write_text(Path(root) / LATEST, final.name + "\n")
    except OSError as exc:
        warnings.warn(f"{final} is saved, but {Path(root) / LATEST} could not be updated: {exc}", stacklevel=3)


def _diff(saved: Any, now: Any, path: str) -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        return [d for k in sorted(set(saved) | set(now)) for d in _diff(saved.get(k), now.get(k), f"{path}.{k}")]
    return [] if saved == now else [f"{path.lstrip('.')}: checkpoint {saved!r}, now {now!r}"]


def check_compatible(saved: dict, facts: dict, path: Path) -> None:
    """Raise :class:`IncompatibleCheckpoint` naming each field where the run that saved ``path``
    differs from this one (model, tokenizer, inputs, schedule); the layout may differ."""
    keep = {k: v for k, v in facts.items() if k != "layout"}
    saved = {k: v for k, v in saved.items() if k in keep}
    for d in (saved, keep):
        if "train" in d:
            d["train"] = {k: v for k, v in d["train"].items() if k not in RESUMABLE_TRAIN_CHANGES}
    wrong = _diff(saved, keep, "")
    if wrong:
        raise IncompatibleCheckpoint(
            f"cannot resume from {path}: it was saved by a different run:\n  "
            + "\n  ".join(wrong)
            + f"\n(restore those settings to resume it; train.resume=false starts over and deletes {path.parent})"
        )


def load(
    path: Path,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    facts: dict,
    generators: dict[str, torch.Generator] | None = None,
) -> Restored:
    """Restore model, optimizer, scheduler and (same layout only) RNG states, ``generators`` included,
    from ``path``."""
    path = Path(path)
    safe_load.verify_on_every_rank(path)  # before megatron unpickles anything of it
    saved = json.loads((path / STATE).read_text())
    check_compatible(saved, facts, path)
    loaded = dist_checkpointing.load(_sharded(model, optimizer, is_loading=True), str(path))
    model.load_state_dict(loaded["model"])
    _load_optimizer(optimizer, loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    rng = path / RNG / f"rank_{_rank():05d}.pt"
    if saved["layout"] == facts["layout"] and rng.is_file():
        if (rng_state := _read_rng(rng)) is not None:
            _set_rng_state(rng_state, generators)
    elif _rank() == 0:
        warnings.warn(
            f"resuming {path} under layout {facts['layout']} (saved under {saved['layout']}): RNG streams "
            "restart from the seed, so the curve continues correctly but not bit for bit",
            stacklevel=2,
        )
    rows = pl.read_csv(path / METRICS).to_dicts() if (path / METRICS).is_file() else []
    return Restored(step=int(loaded["step"]), rows=rows, path=path)
