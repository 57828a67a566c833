"""Sparse upcycling of a checkpoint: a dense mm1 checkpoint in, a mixture-of-experts one out.

The weights are mapped by :func:`mm1.models.upcycle.upcycle_state`; this module opens a process
group, loads the dense checkpoint, and saves the upcycled model with its provenance.
"""

from __future__ import annotations

from pathlib import Path

from mm1 import provenance
from mm1.config import ModelConfig, ParallelConfig
from mm1.models.mm1_model import MM1Model
from mm1.models.upcycle import ROUTER_INIT_STD, check_upcyclable, upcycle_state
from mm1.parallel.setup import distributed
from mm1.train import checkpoint


def upcycle_checkpoint(dense_ckpt: Path, moe_cfg: ModelConfig, out: Path, seed: int) -> Path:
    """Upcycle the dense mm1 checkpoint ``dense_ckpt`` to ``moe_cfg`` and save it to ``out``.

    Runs as a plain process (it opens its own one-process group). The result loads under any
    TP/PP/EP layout like every mm1 checkpoint; its ``model.json`` holds ``moe_cfg`` and, under
    ``upcycled_from``, the parent's path, content hash and metadata, and the router init.
    """
    dense_ckpt = Path(dense_ckpt)
    meta = checkpoint.read_meta(dense_ckpt)
    dense_cfg: ModelConfig = meta["model"]
    check_upcyclable(dense_cfg, moe_cfg)
    vocab, image_id = meta["vocab_size"], meta["image_token_id"]
    parent = {**meta, "model": dense_cfg.model_dump(mode="json")}
    with distributed(ParallelConfig(), seed):
        dense = MM1Model(dense_cfg, vocab_size=vocab, image_token_id=image_id)
        checkpoint.load_into(dense, dense_ckpt)
        state = upcycle_state(dense.state_dict(), dense_cfg, moe_cfg, seed=seed)
        model = MM1Model(moe_cfg, vocab_size=vocab, image_token_id=image_id)
        model.load_state_dict(state, strict=True)
        del dense, state
        new_meta = {
            "model": moe_cfg.model_dump(mode="json"),
            "vocab_size": vocab,
            "image_token_id": image_id,
            "upcycled_from": {
                "checkpoint": str(dense_ckpt),
                "sha256": provenance.hash_path(dense_ckpt),
                "meta": parent,
                "router_init": {"distribution": "normal", "std": ROUTER_INIT_STD, "seed": seed},
                "git": provenance.git_state(),
            },
        }
        return checkpoint.save(model, new_meta, Path(out))
