"""Layout-independent initial weights (mm1.models.init), single process.

That the full tensors are the same under TP=2, PP=2 and EP=2 is shown end to end by
tests/parallel/test_layouts.py (their loss curves match one process from step 1).
"""

from __future__ import annotations

import math

import pytest
import torch

from mm1.config import ModelConfig, ParallelConfig, load
from mm1.models.init import init_weights, shard, slots
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from tinykit import TINY_ENCODER, tiny_decoder

LAYERS = 2
MOE = ["model.moe.num_experts=4", "model.moe.layer_freq=2"]  # layer 1 MoE, layer 2 dense


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return load(None, [*TINY_ENCODER, *tiny_decoder(LAYERS, 32, 4, 24), *MOE]).model


@pytest.fixture(scope="module")
def group():
    with distributed(ParallelConfig(), seed=0):
        yield


def weights(cfg: ModelConfig, construction_seed: int, init_seed: int | None) -> dict[str, torch.Tensor]:
    torch.manual_seed(construction_seed)
    model = MM1Model(cfg, vocab_size=50, image_token_id=3)
    if init_seed is not None:
        init_weights(model, init_seed)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_same_seed_same_weights_whatever_the_rng_at_construction(group, cfg: ModelConfig) -> None:
    built = [weights(cfg, 1, None), weights(cfg, 2, None)]
    assert any(not torch.equal(v, built[1][k]) for k, v in built[0].items())  # megatron's own draw moves
    a, b = weights(cfg, 1, init_seed=7), weights(cfg, 2, init_seed=7)
    assert a.keys() == b.keys()
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_other_seed_other_weights(group, cfg: ModelConfig) -> None:
    a, b = weights(cfg, 1, init_seed=7), weights(cfg, 1, init_seed=8)
    drawn = [k for k, v in a.items() if v.std() > 0]  # not the 0 biases and 1 norm gains
    assert len(drawn) > 10
    assert all(not torch.equal(a[k], b[k]) for k in drawn)


def test_the_global_rng_is_left_alone(group, cfg: ModelConfig) -> None:
    torch.manual_seed(3)
    model = MM1Model(cfg, vocab_size=50, image_token_id=3)
    before = torch.get_rng_state()
    init_weights(model, 7)
    assert torch.equal(torch.get_rng_state(), before)


def test_megatron_init_methods_biases_zero_norms_one(group, cfg: ModelConfig) -> None:
    w = weights(cfg, 1, init_seed=7)
    assert torch.equal(w["connector.proj.bias"], torch.zeros(32))
    assert torch.equal(w["language_model.decoder.final_layernorm.weight"], torch.ones(32))
    assert torch.equal(w["encoder.ln_pre.weight"], torch.ones(16))
    # output projections: N(0, 0.02 / sqrt(2 * num_layers)); everything else drawn: N(0, 0.02)
    scaled = 0.02 / math.sqrt(2 * LAYERS)
    for name, std in [
        ("language_model.decoder.layers.1.self_attention.linear_proj.weight", scaled),
        ("language_model.decoder.layers.0.mlp.experts.local_experts.3.linear_fc2.weight", scaled),
        ("language_model.decoder.layers.1.mlp.linear_fc1.weight", 0.02),
        ("language_model.embedding.word_embeddings.weight", 0.02),
        ("encoder.conv1.weight", 0.02),
        ("connector.proj.weight", 0.02),
    ]:
        assert w[name].std().item() == pytest.approx(std, rel=0.15), name


def test_experts_are_drawn_independently(group, cfg: ModelConfig) -> None:
    w = weights(cfg, 1, init_seed=7)
    fc1 = [w[f"language_model.decoder.layers.0.mlp.experts.local_experts.{e}.linear_fc1.weight"] for e in range(4)]
    assert all(not torch.equal(fc1[i], fc1[j]) for i in range(4) for j in range(i))


def test_global_names_are_the_single_process_names(group, cfg: ModelConfig) -> None:
    model = MM1Model(cfg, vocab_size=50, image_token_id=3)
    assert {name: slot.global_name for name, slot in slots(model).items()} == {
        name: name for name, _ in model.named_parameters()
    }


def test_shard_cuts_contiguous_blocks_and_gated_halves() -> None:
    full = torch.arange(8.0).reshape(8, 1)  # rows 0-3 gate, 4-7 up for a gated fc1
    assert shard(full, 2, 1, dim=0).flatten().tolist() == [4, 5, 6, 7]
    assert shard(full, 2, 0, dim=0, gated=True).flatten().tolist() == [0, 1, 4, 5]
    assert shard(full, 2, 1, dim=0, gated=True).flatten().tolist() == [2, 3, 6, 7]
    assert shard(full.T, 4, 2, dim=1).flatten().tolist() == [4, 5]
