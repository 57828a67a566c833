"""Model checkpoints with megatron's dist_checkpointing, written atomically.

A checkpoint folder holds the sharded weights (any TP/PP layout can load them) and
``model.json``: the model config and tokenizer facts needed to rebuild the model.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from mm1.config import ModelConfig

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import dist_checkpointing

META = "model.json"


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def save(model: torch.nn.Module, meta: dict[str, Any], out: Path) -> Path:
    """Save ``model`` (every rank calls this) to ``out``; readers never see a half-written folder."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(tmp))
    _barrier()
    if rank0:
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    _barrier()
    return out


def read_meta(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / META
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt} is not an mm1 checkpoint (no {META}); run the train stage first")
    meta = json.loads(path.read_text())
    meta["model"] = ModelConfig.model_validate(meta["model"])
    return meta


def load_into(model: torch.nn.Module, ckpt: Path) -> None:
    """Load weights saved under any parallel layout into ``model`` (built for this layout)."""
    state = dist_checkpointing.load(model.sharded_state_dict(), str(ckpt))
    model.load_state_dict(state)
