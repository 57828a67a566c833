"""Activation recomputation (parallel.recompute) changes memory, never the numbers: loss and grads equal."""

from __future__ import annotations

import pytest
import torch

from mm1.config import ParallelConfig, load
from mm1.models.encoder import build_encoder
from mm1.models.megatron_config import MegatronLayout, decoder_config
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from tinykit import TINY_ENCODER, tiny_decoder

TINY = [*TINY_ENCODER, *tiny_decoder(layers=2, hidden=16, heads=2, seq_length=16), "model.moe.num_experts=0"]
VOCAB, IMAGE_ID = 50, 3


def _loss_and_grads(recompute: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """One forward + backward of a seed-1 tiny MM1 model built with ``recompute``, on fixed inputs;
    also the bytes autograd saved for backward during the forward (parameters included)."""
    cfg = load(None, TINY).model
    with distributed(ParallelConfig(), seed=1):
        model = MM1Model(
            cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID, layout=MegatronLayout(recompute=recompute)
        ).train()
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(IMAGE_ID + 1, VOCAB, (2, cfg.decoder.seq_length), generator=g)
        tokens[:, 1 : 1 + cfg.connector.num_tokens] = IMAGE_ID  # one image per sequence
        images = torch.randn(2, 3, cfg.encoder.image_size, cfg.encoder.image_size, generator=g)
        saved = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(tokens, images, labels=torch.roll(tokens, -1, dims=1)).mean()
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}, sum(saved)


@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_recompute_gives_the_same_loss_and_grads(recompute: str) -> None:
    ref_loss, ref_grads, ref_saved = _loss_and_grads("none")
    loss, grads, saved = _loss_and_grads(recompute)
    assert saved < ref_saved  # it did recompute: less was kept for backward
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert torch.equal(grad, ref_grads[name]), name
    assert any(g.abs().sum() > 0 for name, g in grads.items() if name.startswith("encoder."))


def test_recompute_reaches_megatron_configs() -> None:
    cfg = load(None, TINY).model
    with distributed(ParallelConfig(), seed=0):
        none = decoder_config(cfg.decoder, cfg.moe, MegatronLayout())
        selective = decoder_config(cfg.decoder, cfg.moe, MegatronLayout(recompute="selective"))
        full = decoder_config(cfg.decoder, cfg.moe, MegatronLayout(recompute="full"))
        vit = build_encoder(cfg.encoder, MegatronLayout(recompute="full"))
    assert none.recompute_granularity is None
    assert selective.recompute_granularity == "selective" and selective.recompute_modules == ["core_attn"]
    assert (full.recompute_granularity, full.recompute_method, full.recompute_num_layers) == ("full", "uniform", 1)
    assert vit.config.recompute_granularity == "full"


def test_parallel_recompute_is_validated() -> None:
    assert load(None, ["parallel.recompute=full"]).parallel.recompute == "full"
    with pytest.raises(ValueError, match="recompute"):
        load(None, ["parallel.recompute=sometimes"])
