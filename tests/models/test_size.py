"""Analytic parameter counts and FLOPs against instantiated models; MM1's learning-rate law."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from megatron.core.transformer.dot_product_attention import DotProductAttention
from torch.utils.flop_counter import FlopCounterMode

from mm1.config import ParallelConfig, RunConfig, load
from mm1.config.presets import available, load_preset
from mm1.models.attention import SdpaAttention
from mm1.models.flops import connector_flops, decoder_flops, encoder_flops, step_flops
from mm1.models.mm1_model import MM1Model, count_mismatches, instantiated_counts
from mm1.models.size import (
    ParamCount,
    count_model,
    decoder_params,
    law_weight_decay,
    moe_layer_indices,
    optimizer_hparams,
    peak_lr,
)
from mm1.parallel.setup import distributed

VOCAB, IMAGE_ID = 300, 5  # padded to 384: the padding must be counted


@pytest.fixture(scope="module")
def dist() -> Iterator[None]:
    with distributed(ParallelConfig(), seed=0):
        yield


# --- the LR law ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "lr"), [(3e9, 5.8e-5), (7e9, 4.1e-5), (30e9, 2.2e-5)])
def test_lr_law_gives_mm1s_values(n: float, lr: float) -> None:
    assert peak_lr(n) == pytest.approx(lr, rel=0.02)
    assert law_weight_decay(n) == pytest.approx(0.1 * peak_lr(n))


def test_lr_law_falls_with_size_and_rejects_zero() -> None:
    assert peak_lr(1e6) > peak_lr(1e9) > peak_lr(1e12)
    with pytest.raises(ValueError, match="positive"):
        peak_lr(0)


def test_optimizer_hparams_take_the_config_when_set_and_the_law_otherwise() -> None:
    cfg = RunConfig()
    n = decoder_params(cfg.model.decoder, cfg.model.moe, cfg.tokenizer.vocab_size).active
    # weight decay in torch terms (shrink = wd x lr(t)): MM1's lambda = 0.1 x peak LR is wd = 0.1 at any LR
    assert optimizer_hparams(cfg) == pytest.approx((peak_lr(n), 0.1))
    assert optimizer_hparams(load(None, ["train.lr=0.01"])) == pytest.approx((0.01, 0.1))
    assert optimizer_hparams(load(None, ["train.lr=0.01", "train.weight_decay=0"])) == (0.01, 0.0)
    small_vocab = optimizer_hparams(cfg, vocab_size=261)[0]  # fewer parameters -> a higher LR
    assert small_vocab > optimizer_hparams(cfg)[0]


def test_optimizer_hparams_use_the_active_count_for_moe() -> None:
    cfg = load(None, ["model.moe.num_experts=8"])
    dec = decoder_params(cfg.model.decoder, cfg.model.moe, cfg.tokenizer.vocab_size)
    assert dec.active < dec.total
    assert optimizer_hparams(cfg)[0] == pytest.approx(peak_lr(dec.active))


# --- parameter counts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "freq", "expected"), [(4, 2, [0, 2]), (5, 2, [0, 2, 4]), (32, 4, [0, 4, 8, 12, 16, 20, 24, 28])]
)
def test_moe_layers_follow_megatrons_layer_freq(layers: int, freq: int, expected: list[int]) -> None:
    cfg = load(None, ["model.moe.num_experts=4", f"model.moe.layer_freq={freq}"])
    assert moe_layer_indices(layers, cfg.model.moe) == expected
    assert moe_layer_indices(layers, RunConfig().model.moe) == []


VARIANTS = {
    "default": [],
    "class-token-gqa-layernorm-gelu": [
        "model.encoder.class_token=true",
        "model.decoder.num_query_groups=2",
        "model.decoder.normalization=LayerNorm",
        "model.decoder.activation=gelu",
        "model.decoder.position_embedding=learned_absolute",
    ],
    "moe-odd-layers-attn-pool": [
        "model.decoder.num_layers=5",
        "model.moe.num_experts=4",
        "model.moe.layer_freq=2",
        "model.connector.kind=attn_pool",
    ],
    "moe-freq3-c-abstractor": [
        "model.moe.num_experts=3",
        "model.moe.layer_freq=3",
        "model.connector.kind=c_abstractor",
        "model.connector.num_tokens=9",
    ],
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_counts_equal_an_instantiated_cpu_model(dist: None, variant: str) -> None:
    cfg = load(None, VARIANTS[variant]).model
    model = MM1Model(cfg, vocab_size=VOCAB, image_token_id=IMAGE_ID)
    counts = count_model(cfg, VOCAB)
    for part, attr in (("encoder", "encoder"), ("connector", "connector"), ("decoder", "language_model")):
        assert counts[part].total == sum(p.numel() for p in getattr(model, attr).parameters()), part
    assert counts["total"].total == sum(p.numel() for p in model.parameters())
    assert instantiated_counts(cfg, VOCAB) == counts  # the meta-device build gives the same, active included


def test_moe_active_count_is_router_plus_top_k_experts() -> None:
    dense = load(None, ["model.decoder.num_layers=4"]).model
    moe = load(None, ["model.decoder.num_layers=4", "model.moe.num_experts=8", "model.moe.top_k=2"]).model
    d, m = decoder_params(dense.decoder, dense.moe, VOCAB), decoder_params(moe.decoder, moe.moe, VOCAB)
    h, f = dense.decoder.hidden_size, dense.decoder.ffn_hidden_size
    mlp = 3 * h * f  # SwiGLU
    n_moe = 2  # layers 0 and 2
    assert m.total - d.total == n_moe * (8 * h + 7 * mlp)
    assert m.active - d.active == n_moe * (8 * h + 1 * mlp)


# Structurally distinct presets, built on the meta device; `mm1 presets --check` covers all of them.
@pytest.mark.parametrize("name", ["mini-s", "llm-30b", "llm-7b-moe", "mm1-ablation", "aim-600m"])
def test_preset_counts_equal_the_meta_device_model(dist: None, name: str) -> None:
    cfg = load_preset(name)
    assert count_mismatches(cfg.model, cfg.tokenizer.vocab_size) == []


@pytest.mark.slow
def test_every_preset_counts_equal_the_meta_device_model(dist: None) -> None:
    """All presets (what `mm1 presets --check` does): about 15 s, mostly the 64-expert MoE builds."""
    bad = {name: lines for name in available() if (lines := count_mismatches(*_model_and_vocab(name)))}
    assert bad == {}


def _model_and_vocab(name: str):
    cfg = load_preset(name)
    return cfg.model, cfg.tokenizer.vocab_size


def test_param_count_arithmetic() -> None:
    assert ParamCount(3, 2) + ParamCount(1, 1) == ParamCount(4, 3)
    assert ParamCount(3, 2) * 2 == ParamCount(6, 4)


# --- FLOPs ---------------------------------------------------------------------------------------


def _batch(cfg, n_seq: int, images_per_seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, size = cfg.model.connector.num_tokens, cfg.model.encoder.image_size
    tokens = torch.randint(10, 200, (n_seq, cfg.model.decoder.seq_length))
    for i in range(images_per_seq):
        tokens[:, 1 + i * (n + 2) : 1 + i * (n + 2) + n] = IMAGE_ID
    return tokens, torch.randn(n_seq * images_per_seq, 3, size, size)


@pytest.mark.parametrize("variant", ["default", "class-token-gqa-layernorm-gelu", "moe-freq3-c-abstractor"])
def test_step_flops_equal_torchs_flop_counter_on_a_forward(dist: None, variant: str, monkeypatch) -> None:
    """Exact agreement: FlopCounterMode counts the matmuls and convolutions megatron's local modules
    run (full-square attention scores included), which is what the formula counts.

    On CPU torch runs scaled_dot_product_attention as a fused kernel that FlopCounterMode does not
    count (on the meta device it does), so the model's SDPA core attention is counted through
    megatron's unfused computation of the same product, and attn_pool is left out."""
    monkeypatch.setattr(SdpaAttention, "forward", DotProductAttention.forward)
    cfg = load(None, [*VARIANTS[variant], "train.global_batch_size=2", "train.micro_batch_size=2"])
    model = MM1Model(cfg.model, vocab_size=VOCAB, image_token_id=IMAGE_ID).eval()
    tokens, images = _batch(cfg, n_seq=2, images_per_seq=2)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(tokens, images)
    per_module = counter.get_flop_counts()
    flops = step_flops(cfg, images_per_sequence=2, vocab_size=VOCAB)
    assert flops["forward"] == counter.get_total_flops()
    assert flops["encoder"] == sum(per_module["MM1Model.encoder"].values())
    assert flops["decoder"] == sum(per_module["MM1Model.language_model"].values())
    assert flops["total"] == 3 * flops["forward"]


def test_step_flops_scale_with_batch_and_images() -> None:
    cfg = load_preset("mm1-ablation")
    one, two = step_flops(cfg, 1), step_flops(cfg, 2)
    assert two["encoder"] == 2 * one["encoder"] and two["connector"] == 2 * one["connector"]
    assert two["decoder"] == one["decoder"]  # image tokens take decoder positions
    m = cfg.model
    assert one["decoder"] == cfg.train.global_batch_size * decoder_flops(m.decoder, m.moe, cfg.tokenizer.vocab_size)
    assert one["encoder"] == cfg.train.global_batch_size * encoder_flops(m.encoder)
    assert connector_flops(m) > 0


def test_decoder_flops_are_six_n_per_token_plus_attention() -> None:
    """The familiar check: forward ~ 2 x (non-embedding params + LM head) per token + 4 L S^2 h."""
    cfg = load_preset("llm-7b")
    dec, vocab = cfg.model.decoder, cfg.tokenizer.vocab_size
    n = decoder_params(dec, cfg.model.moe, vocab).total
    embedding_and_norms = 49152 * dec.hidden_size + (2 * dec.num_layers + 1) * dec.hidden_size
    s = dec.seq_length
    expected = 2 * (n - embedding_and_norms) * s + 4 * dec.num_layers * s * s * dec.hidden_size
    assert decoder_flops(dec, cfg.model.moe, vocab) == expected
