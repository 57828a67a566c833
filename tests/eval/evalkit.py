"""A tiny world, its tokenizer and an untrained tiny checkpoint for the eval tests.

Tests import from here (``from evalkit import ...``), not from conftest (see tests/train/trainkit.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mm1.config import ParallelConfig, RunConfig, load
from mm1.data.stages import make_tokenizer, make_world
from mm1.data.tokenizer import TextTokenizer
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.train import checkpoint

WORLD = [
    "world.n_captions=64",
    "world.n_documents=16",
    "world.n_text=32",
    "world.n_bench_val=6",
    "world.n_bench_train=10",
    "world.n_textcore=12",
    "world.n_sft=4",
    "world.n_multiple_choice=6",
    "tokenizer.vocab_size=320",
]
MODEL = [
    "model.encoder.hidden_size=32",
    "model.encoder.num_layers=1",
    "model.encoder.ffn_hidden_size=64",
    "model.connector.num_tokens=4",
    "model.decoder.num_layers=2",
    "model.decoder.hidden_size=64",
    "model.decoder.ffn_hidden_size=128",
    "model.decoder.seq_length=160",
]


def config(*overrides: str) -> RunConfig:
    return load(None, WORLD + MODEL + list(overrides))


def make(root: Path, *overrides: str) -> dict[str, Path]:
    """World, tokenizer and a randomly initialised checkpoint (seeded) under ``root``."""
    cfg = config(*overrides)
    make_world(cfg.world, root / "world")
    tok_path = make_tokenizer(cfg.tokenizer, root / "world" / "manifest.parquet", root / "tokenizer", 0.01).path
    run = {"root": root, "data": root / "world", "tokenizer": tok_path}
    return run | {"ckpt": make_checkpoint(run, root / "ckpt", *overrides)}


def make_checkpoint(run: dict[str, Path], out: Path, *overrides: str) -> Path:
    """A randomly initialised (seeded) checkpoint of the tiny model with ``overrides``."""
    cfg = config(*overrides)
    tok = TextTokenizer(run["tokenizer"])
    with distributed(ParallelConfig(), seed=0):
        torch.manual_seed(0)
        model = MM1Model(cfg.model, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
        with torch.no_grad():  # sharper logits than the init's: greedy choices are not near-ties
            for p in model.language_model.output_layer.parameters():
                p.mul_(20)
        meta = {"model": cfg.model.model_dump(mode="json"), "vocab_size": tok.vocab_size,
                "image_token_id": tok.image_id, "steps": 0}  # fmt: skip
        return checkpoint.save(model, meta, out)
