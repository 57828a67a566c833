"""A tiny world, its tokenizer and packed sequences, shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainkit import TINY, WORLD, tiny  # noqa: F401  (re-exported for tests that import them from conftest)

from mm1.config import load
from mm1.data.stages import make_tokenizer, make_world, pack


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict[str, Path]:
    """Packed sequences for 6 steps of 8 (longer runs wrap around) and the tokenizer."""
    root = tmp_path_factory.mktemp("train-world")
    cfg = load(None, WORLD + TINY)
    make_world(cfg.world, root / "world")
    manifest = root / "world" / "manifest.parquet"
    tok = make_tokenizer(cfg.tokenizer, manifest, root / "tokenizer", cfg.data.max_bad_fraction)
    pack(cfg, manifest, tok.path, root / "packed")
    return {"packed": root / "packed" / "train.parquet", "tokenizer": tok.path}
