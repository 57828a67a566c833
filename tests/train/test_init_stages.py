"""Stages that start from another stage's checkpoint: SFT from the pre-trained model at a higher
resolution with image splitting, and the multimodal model from a text-only LLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mm1.data.stages import pack, sft_pack
from mm1.train import checkpoint
from mm1.train.trainer import train
from tinykit import WORLD, tiny

SFT = ["model.decoder.seq_length=192", "model.encoder.image_size=48", "sft.image_grid=2", "train.steps=3"]


@pytest.fixture(scope="module")
def pretrained(tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrained")
    # 30 steps (the packed file wraps around): enough to learn the SFT text's words, which the test reads
    return train(tiny(*WORLD, "train.steps=30"), tiny_world["packed"], tiny_world["tokenizer"], out).checkpoint


def test_sft_starts_from_the_pretrained_model_at_48px_with_split_images(tiny_world, pretrained, tmp_path: Path) -> None:
    cfg = tiny(*WORLD, *SFT)
    manifest = tiny_world["manifest"]
    stats = sft_pack(cfg, manifest, tiny_world["tokenizer"], tmp_path / "sft_packed")
    assert stats["sequences"] >= 1 and stats["images"] % 5 == 0  # 2 x 2 crops + 1 overview per picture
    packed = tmp_path / "sft_packed" / "train.parquet"
    tuned = train(cfg, packed, tiny_world["tokenizer"], tmp_path / "sft", init=[(pretrained, None)])
    scratch = train(cfg, packed, tiny_world["tokenizer"], tmp_path / "scratch")
    first_tuned, first_scratch = tuned.metrics["loss"][0], scratch.metrics["loss"][0]
    assert first_tuned < first_scratch - 0.2, (first_tuned, first_scratch)  # it starts from what it learnt
    assert checkpoint.read_meta(tuned.checkpoint)["model"].encoder.image_size == 48


def test_multimodal_training_takes_its_decoder_from_a_text_only_llm(tiny_world, tmp_path: Path) -> None:
    text_only = tiny(
        *WORLD,
        "data.mixture.caption=0",
        "data.mixture.interleaved=0",
        "data.mixture.text=1",
        "train.freeze=[encoder, connector]",
        "train.steps=3",
    )
    manifest = tiny_world["manifest"]
    pack(text_only, manifest, tiny_world["tokenizer"], tmp_path / "text_packed")
    llm = train(text_only, tmp_path / "text_packed" / "train.parquet", tiny_world["tokenizer"], tmp_path / "llm")
    cfg = tiny(*WORLD, "train.steps=2")
    init = [(llm.checkpoint, ("language_model",))]
    mm = train(cfg, tiny_world["packed"], tiny_world["tokenizer"], tmp_path / "mm", init=init)
    scratch = train(cfg, tiny_world["packed"], tiny_world["tokenizer"], tmp_path / "scratch")
    assert torch.isfinite(torch.tensor(mm.metrics["loss"].to_list())).all()
    assert mm.metrics["loss"][0] != scratch.metrics["loss"][0]  # the decoder came from the LLM
    assert "init_language_model" in _inputs(tmp_path / "mm")


def _inputs(out: Path) -> dict:
    import json

    return json.loads((out / "provenance.json").read_text())["inputs"]
