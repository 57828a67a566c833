"""The tiny run the training tests share: world size, model and schedule overrides.

Tests import these from here (``from trainkit import tiny``), not from conftest: when pytest
collects several test folders, ``import conftest`` may find another folder's conftest.
"""

from __future__ import annotations

from mm1.config import RunConfig, load

WORLD = [
    "world.n_captions=64",
    "world.n_documents=16",
    "world.n_text=32",
    "world.n_bench_val=8",
    "world.n_bench_train=4",
    "world.n_textcore=4",
    "world.n_sft=4",
    "world.n_multiple_choice=4",
    "tokenizer.vocab_size=320",
]
TINY = [
    "model.encoder.hidden_size=32",
    "model.encoder.num_layers=1",
    "model.encoder.ffn_hidden_size=64",
    "model.decoder.num_layers=2",
    "model.decoder.hidden_size=64",
    "model.decoder.ffn_hidden_size=128",
    "train.steps=6",
    "train.warmup_steps=1",
    "train.micro_batch_size=4",
    "train.global_batch_size=8",
]


def tiny(*overrides: str) -> RunConfig:
    return load(None, TINY + list(overrides))
