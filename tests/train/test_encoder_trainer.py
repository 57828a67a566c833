"""Encoder pre-training (Table 1's CLIP vs AIM): each objective trains, and its ViT starts the
multimodal model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
import torch

from mm1.cli import main
from mm1.config import ParallelConfig
from mm1.data.tokenizer import TextTokenizer
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.train import checkpoint
from mm1.train.encoder_trainer import train_encoder
from tinykit import WORLD, tiny

ENCODER = ["train.steps=12", "train.warmup_steps=2", "train.lr=3e-3", "model.encoder.clip.text_seq_length=24"]


@pytest.mark.parametrize("objective", ["clip", "aim"])
def test_each_objective_lowers_its_loss_and_saves_the_vit_as_encoder(
    tiny_world, tmp_path: Path, objective: str
) -> None:
    cfg = tiny(*WORLD, *ENCODER, f"model.encoder.objective={objective}")
    metrics = train_encoder(cfg, tiny_world["manifest"], tiny_world["tokenizer"], tmp_path / "enc")
    losses = metrics["loss"].to_list()
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
    assert pl.read_csv(tmp_path / "enc" / "metrics.csv")["step"].to_list() == list(range(1, 13))
    meta = checkpoint.read_meta(tmp_path / "enc" / "checkpoint")
    assert meta["objective"] == objective

    # The held-out check: coco's 8 val images (WORLD), never trained on, beside chance.
    summary = json.loads((tmp_path / "enc" / "metrics.json").read_text())
    assert summary["objective"] == objective and summary["heldout_set"] == "coco-val"
    assert summary["heldout_images"] == 8
    if objective == "clip":
        assert summary["chance_loss"] == pytest.approx(math.log(4))  # micro-batch 4 (TINY)
        assert summary["heldout_top1_chance"] == pytest.approx(100 / summary["heldout_captions"])
        assert 0 <= summary["heldout_top1"] <= summary["heldout_top5"] <= 100
    else:
        assert 0 < summary["heldout_loss"] and 0 < summary["heldout_mean_predictor_loss"] <= 1.0  # normalised pixels
    assert (tmp_path / "enc" / "encoder.png").read_bytes().startswith(b"\x89PNG")

    # The multimodal model at another image size starts from the pre-trained ViT.
    mm = tiny(*WORLD, "model.encoder.image_size=48")
    tok = TextTokenizer(tiny_world["tokenizer"])
    with distributed(ParallelConfig(), seed=5):
        model = MM1Model(mm.model, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
        before = model.encoder.decoder.layers[0].mlp.linear_fc1.weight.clone()
        checkpoint.load_into(model, tmp_path / "enc" / "checkpoint", parts=("encoder",))
        assert not torch.equal(model.encoder.decoder.layers[0].mlp.linear_fc1.weight, before)
        assert model.encoder.position_embeddings.weight.shape[0] == 12 * 12


def test_the_same_config_repeats_the_loss_curve(tiny_world, tmp_path: Path) -> None:
    cfg = tiny(*WORLD, *ENCODER, "train.steps=3")
    a = train_encoder(cfg, tiny_world["manifest"], tiny_world["tokenizer"], tmp_path / "a")["loss"].to_list()
    b = train_encoder(cfg, tiny_world["manifest"], tiny_world["tokenizer"], tmp_path / "b")["loss"].to_list()
    assert a == b


def test_pipeline_parallel_is_refused_with_the_fix(tiny_world, tmp_path: Path) -> None:
    args = ["encoder", "--manifest", str(tiny_world["manifest"]), "--tokenizer", str(tiny_world["tokenizer"])]
    code = main([*args, "--out", str(tmp_path), "--set", "parallel.world_size=2", "--set", "parallel.pp=2"])
    assert code == 2


def test_tp_that_does_not_divide_the_clip_text_heads_names_both_fields() -> None:
    """Only the encoder stage builds the CLIP text tower, so only it needs tp | its heads (the 30B
    layout's tp 8 and OpenAI's 12 text heads): a clear error here, not an assertion inside megatron."""
    from mm1.train.encoder_trainer import check_layout

    cfg = tiny(
        "parallel.world_size=2",
        "parallel.tp=2",
        "model.encoder.clip.text_attention_heads=3",
        "model.encoder.clip.text_hidden_size=48",
    )
    with pytest.raises(ValueError, match=r"parallel\.tp=2 must divide model\.encoder\.clip\.text_attention_heads=3"):
        check_layout(cfg)
    check_layout(tiny("parallel.world_size=2", "parallel.tp=2"))  # the default text tower splits
