"""Model checkpoints with megatron's dist_checkpointing, written atomically.

A checkpoint folder holds the sharded weights (any TP/PP layout can load them) and
``model.json``: the model config and tokenizer facts needed to rebuild the model.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from mm1.config import ModelConfig
from mm1.models.encoder import interpolate_position_embeddings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from megatron.core.models.vision.clip_vit_model import CLIPViTModel

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


def save(model: torch.nn.Module, meta: dict[str, Any], out: Path) -> Path:
    """Save ``model`` (every rank calls this) to ``out``; readers never see a half-written folder."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    write_results_in_process()
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
