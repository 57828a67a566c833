"""Hugging Face interop: tiny random HF models (nothing downloaded) against mm1's megatron modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from mm1.config import DecoderConfig, EncoderConfig, ModelConfig, ParallelConfig
from mm1.models.hf import (
    decoder_config_from_hf,
    decoder_config_to_hf,
    encoder_config_from_hf,
    encoder_config_to_hf,
    export_hf,
    fuse_qkv,
    load_hf_into,
    split_qkv,
)
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed

VOCAB = 300  # not a multiple of 128: mm1 pads it to 384
IMAGE_ID = VOCAB  # mm1 appends <image> after the Llama vocabulary


def _vision_config(**overrides) -> CLIPVisionConfig:
    kwargs = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        hidden_act="quick_gelu",
        attn_implementation="eager",
    )
    return CLIPVisionConfig(**(kwargs | overrides))


def _llama_config(**overrides) -> LlamaConfig:
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attention_bias=False,
        max_position_embeddings=256,
        attn_implementation="eager",
    )
    return LlamaConfig(**(kwargs | overrides))


@torch.no_grad()
def _random(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb every parameter, so that norms and biases are not the init's ones and zeros."""
    torch.manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _hf_models(act: str = "quick_gelu", kv_heads: int = 2) -> tuple[CLIPVisionModel, LlamaForCausalLM]:
    torch.manual_seed(0)
    vision = _random(CLIPVisionModel(_vision_config(hidden_act=act)), seed=1)
    llm = _random(LlamaForCausalLM(_llama_config(num_key_value_heads=kv_heads)), seed=2)
    return vision, llm


@pytest.fixture(autouse=True)
def megatron() -> Iterator[None]:
    """megatron's one-process parallel state, which building and running its modules need."""
    with distributed(ParallelConfig(), seed=0):
        yield


def _mm1_for(vision: CLIPVisionModel, llm: LlamaForCausalLM) -> MM1Model:
    """An MM1Model with the HF models' architecture and weights (connector freshly drawn)."""
    decoder, _ = decoder_config_from_hf(llm.config)
    cfg = ModelConfig(encoder=encoder_config_from_hf(vision.config), decoder=decoder)
    model = MM1Model(cfg, vocab_size=VOCAB + 1, image_token_id=IMAGE_ID).eval()
    return load_hf_into(model, vision=vision, llm=llm)


# --- layout --------------------------------------------------------------------------------------


def test_fused_qkv_goes_group_by_group() -> None:
    hd = 2  # rows per head; each row holds its head's label
    q = torch.tensor([10, 11, 12, 13]).repeat_interleave(hd)[:, None].float()  # 4 query heads
    k = torch.tensor([20, 21]).repeat_interleave(hd)[:, None].float()  # 2 key/value groups
    v = torch.tensor([30, 31]).repeat_interleave(hd)[:, None].float()
    fused = fuse_qkv(q, k, v, groups=2)
    expected = torch.tensor([10, 11, 20, 30, 12, 13, 21, 31]).repeat_interleave(hd).float()
    assert torch.equal(fused[:, 0], expected)
    assert all(torch.equal(a, b) for a, b in zip(split_qkv(fused, heads=4, groups=2), (q, k, v), strict=True))


# --- numerics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_vision_features_match_hf_last_hidden_state(act: str) -> None:
    vision, llm = _hf_models(act=act)
    model = _mm1_for(vision, llm)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = vision(pixel_values=pixels).last_hidden_state  # (B, 1 + P, H), before post_layernorm
        ours = model.encoder(pixels)
    assert ours.shape == theirs.shape == (2, 17, 32)
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
def test_llama_logits_match_hf(kv_heads: int) -> None:
    vision, llm = _hf_models(kv_heads=kv_heads)
    model = _mm1_for(vision, llm)
    tokens = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = llm(input_ids=tokens).logits
        ours = model(tokens, torch.zeros(0, 3, 32, 32))  # text only: (B, S, 384)
    assert ours.shape == (2, 24, 384)
    assert (ours[..., :VOCAB] - theirs).abs().max() <= 1e-4
    assert torch.all(ours[..., VOCAB:] == 0)  # padded rows of the output layer are zeros


# --- round trip ----------------------------------------------------------------------------------


def test_import_export_import_is_lossless() -> None:
    vision, llm = _hf_models()
    model = _mm1_for(vision, llm)
    vision2, llm2 = export_hf(model, vocab_size=VOCAB)

    for original, exported in [(vision, vision2), (llm, llm2)]:
        ours, theirs = original.state_dict(), exported.state_dict()
        assert ours.keys() == theirs.keys()
        for key, tensor in ours.items():
            if key.startswith("post_layernorm."):  # only acts on the pooled output: exported as identity
                assert torch.equal(theirs[key], torch.ones(32) if key.endswith("weight") else torch.zeros(32))
            else:
                assert torch.equal(tensor, theirs[key]), key

    again = _mm1_for(vision2, llm2)  # drawn after the first: nothing may survive from its init
    first, second = model.state_dict(), again.state_dict()
    for key, tensor in first.items():
        if isinstance(tensor, torch.Tensor) and not key.startswith("connector."):
            assert torch.equal(tensor, second[key]), key


def test_configs_round_trip() -> None:
    vc, lc = _vision_config(), _llama_config()
    enc = encoder_config_from_hf(vc)
    dec, vocab = decoder_config_from_hf(lc)
    assert (enc.class_token, enc.activation, enc.ffn_hidden_size) == (True, "quick_gelu", 64)
    assert (dec.num_query_groups, dec.rotary_base, dec.norm_epsilon, vocab) == (2, 10000.0, 1e-6, VOCAB)
    assert encoder_config_to_hf(enc, attn_implementation="eager").to_dict() == vc.to_dict()
    assert decoder_config_to_hf(dec, vocab, attn_implementation="eager").to_dict() == lc.to_dict()
    kept = decoder_config_from_hf(lc, DecoderConfig(seq_length=32))[0]
    assert kept.seq_length == 32  # the training length is mm1's, not max_position_embeddings


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hidden_act": "gelu_new"}, "CLIPVisionConfig.hidden_act"),
        ({"image_size": [32, 48]}, "CLIPVisionConfig.image_size"),
        ({"num_channels": 1}, "CLIPVisionConfig.num_channels"),
        ({"attention_dropout": 0.1}, "CLIPVisionConfig.attention_dropout"),
    ],
)
def test_unsupported_vision_config_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        encoder_config_from_hf(_vision_config(**overrides))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"tie_word_embeddings": True}, "LlamaConfig.tie_word_embeddings"),
        ({"attention_bias": True}, "LlamaConfig.attention_bias"),
        ({"mlp_bias": True}, "LlamaConfig.mlp_bias"),
        ({"hidden_act": "gelu"}, "LlamaConfig.hidden_act"),
        ({"head_dim": 32}, "LlamaConfig.head_dim"),
        ({"max_position_embeddings": 32}, "LlamaConfig.max_position_embeddings"),
        (
            {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}},
            "LlamaConfig.rope_parameters.rope_type",
        ),
    ],
)
def test_unsupported_llama_config_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        decoder_config_from_hf(_llama_config(**overrides))


def test_load_rejects_a_model_of_another_architecture() -> None:
    vision, llm = _hf_models(act="gelu")
    decoder, _ = decoder_config_from_hf(llm.config)
    encoder = encoder_config_from_hf(vision.config).model_copy(update={"activation": "quick_gelu"})
    cfg = ModelConfig(encoder=encoder, decoder=decoder)
    model = MM1Model(cfg, vocab_size=VOCAB + 1, image_token_id=IMAGE_ID)
    with pytest.raises(ValueError, match="model.encoder differs.*activation"):
        load_hf_into(model, vision=vision)


def test_export_rejects_a_non_llama_decoder() -> None:
    with pytest.raises(ValueError, match="DecoderConfig.normalization"):
        decoder_config_to_hf(DecoderConfig(normalization="LayerNorm"), VOCAB)
    with pytest.raises(ValueError, match="EncoderConfig.class_token"):
        encoder_config_to_hf(EncoderConfig(class_token=False))
