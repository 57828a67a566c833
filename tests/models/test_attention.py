"""SdpaAttention: megatron's local core attention, computed by one fused SDPA call, same numbers."""

from __future__ import annotations

import pytest
import torch
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from mm1.config import ParallelConfig
from mm1.models.attention import SdpaAttention, with_sdpa
from mm1.models.encoder import vit_layer_spec
from mm1.models.megatron_config import decoder_layer_spec
from mm1.parallel.setup import distributed


def _config(groups: int, **kw) -> TransformerConfig:
    return TransformerConfig(
        num_layers=1, hidden_size=128, num_attention_heads=4, num_query_groups=groups,
        use_cpu_initialization=True, attention_dropout=0.0, **kw,
    )  # fmt: skip


def _pair(cfg, mask_type):
    return DotProductAttention(cfg, 1, mask_type, "self"), SdpaAttention(cfg, 1, mask_type, "self")


@pytest.mark.parametrize("groups", [4, 2])  # 2: grouped-query attention
@pytest.mark.parametrize("mask_type", [AttnMaskType.causal, AttnMaskType.no_mask, AttnMaskType.arbitrary])
def test_sdpa_matches_megatrons_attention_in_output_and_gradients(groups, mask_type) -> None:
    gen = torch.Generator().manual_seed(groups)
    mask = None
    if mask_type == AttnMaskType.arbitrary:  # AIM's prefix-causal kind: True = masked out, never a whole row
        mask = torch.rand(2, 1, 16, 16, generator=gen) > 0.6
        mask[..., torch.arange(16), torch.arange(16)] = False
    with distributed(ParallelConfig(), seed=1):
        unfused, fused = _pair(_config(groups), mask_type)
        qkv = [torch.randn(16, 2, n, 32, generator=gen, requires_grad=True) for n in (4, groups, groups)]
        out_a = unfused(*qkv, mask)
        grads_a = torch.autograd.grad(out_a.square().sum(), qkv)
        out_b = fused(*qkv, mask)
        grads_b = torch.autograd.grad(out_b.square().sum(), qkv)
        loose = SdpaAttention(_config(groups), 1, AttnMaskType.no_mask, "self")
        unmasked = loose(*qkv, None)
    assert out_b.shape == out_a.shape == (16, 2, 128)
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-5)
    if mask_type != AttnMaskType.no_mask:  # the mask is applied: without it the output differs
        assert not torch.allclose(unmasked, out_a, atol=1e-3)


def test_what_sdpa_does_not_cover_goes_to_megatrons_path() -> None:
    with distributed(ParallelConfig(), seed=1):
        scaled = SdpaAttention(
            _config(4, apply_query_key_layer_scaling=True, fp16=True), 2, AttnMaskType.causal, "self"
        )
        plain = SdpaAttention(_config(4), 1, AttnMaskType.causal, "self")
    assert not scaled._fused and plain._fused


def test_the_projects_specs_use_sdpa_and_no_unfused_attention_is_left() -> None:
    from mm1.config import DecoderConfig, MoEConfig
    from mm1.models.megatron_config import MegatronLayout, decoder_config

    with distributed(ParallelConfig(), seed=1):
        block = decoder_layer_spec(decoder_config(DecoderConfig(), MoEConfig(), MegatronLayout()))
    cores = [layer.submodules.self_attention.submodules.core_attention for layer in block.layer_specs]
    assert cores and all(core is SdpaAttention for core in cores)
    assert vit_layer_spec().submodules.self_attention.submodules.core_attention is SdpaAttention
    assert "DotProductAttention" not in repr(with_sdpa(block))  # every layer, nothing left behind
