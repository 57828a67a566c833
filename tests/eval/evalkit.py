"""A tiny world, its tokenizer and an untrained tiny checkpoint for the eval tests.

Tests import from here (``from evalkit import ...``), not from conftest (see tests/tinykit.py, which
holds the configs: :data:`tinykit.EVAL_WORLD` and :data:`tinykit.EVAL_MODEL`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mm1.config import ParallelConfig, RunConfig, load
from mm1.data.tokenizer import TextTokenizer
from mm1.parallel.setup import distributed
from mm1.train import checkpoint
from tinykit import EVAL_MODEL, EVAL_WORLD, build_model, write_world


def config(*overrides: str) -> RunConfig:
    return load(None, EVAL_WORLD + EVAL_MODEL + list(overrides))


def make(root: Path, *overrides: str) -> dict[str, Path]:
    """World, tokenizer and a randomly initialised checkpoint (seeded) under ``root``."""
    paths = write_world(root, EVAL_WORLD + EVAL_MODEL + list(overrides), packed=False)
    run = {"root": root, "data": paths["world"], "tokenizer": paths["tokenizer"]}
    return run | {"ckpt": make_checkpoint(run, root / "ckpt", *overrides)}


def make_checkpoint(run: dict[str, Path], out: Path, *overrides: str, seed: int = 0) -> Path:
    """A randomly initialised checkpoint (``seed``) of the tiny model with ``overrides``."""
    cfg = config(*overrides)
    tok = TextTokenizer(run["tokenizer"])
    with distributed(ParallelConfig(), seed=0):
        torch.manual_seed(seed)
        model = build_model(cfg, tok)
        with torch.no_grad():  # sharper logits than the init's: greedy choices are not near-ties
            for p in model.language_model.output_layer.parameters():
                p.mul_(20)
        meta = {"model": cfg.model.model_dump(mode="json"), "vocab_size": tok.vocab_size,
                "image_token_id": tok.image_id, "steps": 0}  # fmt: skip
        return checkpoint.save(model, meta, out)
