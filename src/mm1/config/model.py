"""Config of the MM1 model: image encoder, vision-language connector, decoder, MoE."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from mm1.config.base import Section


class ClipHeadConfig(Section):
    """CLIP pre-training head: a small causal text tower and a contrastive (InfoNCE) loss."""

    text_layers: int = Field(2, ge=1)
    """Layers of the text tower."""
    text_hidden_size: int = Field(64, ge=8)
    """Width of the text tower."""
    text_attention_heads: int = Field(4, ge=1)
    """Attention heads of the text tower; must divide text_hidden_size."""
    text_seq_length: int = Field(32, ge=4)
    """Caption tokens the text tower reads (longer captions are cut; the last token is <eoc>)."""
    embed_dim: int = Field(64, ge=4)
    """Width of the joint image-text embedding space."""
    init_temperature: float = Field(0.07, gt=0, le=1)
    """Initial softmax temperature (learned, as log(1/T), clamped at T >= 0.01)."""

    @model_validator(mode="after")
    def _heads(self) -> ClipHeadConfig:
        if self.text_hidden_size % self.text_attention_heads:
            raise ValueError(
                f"text_hidden_size={self.text_hidden_size} is not divisible by "
                f"text_attention_heads={self.text_attention_heads}"
            )
        return self


class AimHeadConfig(Section):
    """AIM pre-training head: prefix-causal ViT, an MLP predicting each next patch's pixels."""

    head_layers: int = Field(2, ge=1)
    """MLP blocks of the pixel-prediction head (AIM: 12)."""
    head_hidden_size: int = Field(256, ge=8)
    """Width of the head's MLP blocks (AIM: 2048)."""
    normalize_pixels: bool = True
    """Regress per-patch normalised pixels (zero mean, unit variance per patch), as AIM does."""


class EncoderConfig(Section):
    """The ViT image encoder (megatron-core CLIPViTModel, bidirectional attention)."""

    image_size: int = Field(32, ge=8)
    """Input resolution in pixels (square). MM1 ablates 224/336/378."""
    patch_size: int = Field(4, ge=1)
    """Side of a ViT patch in pixels; image_size must be a multiple of it (ViT-L/14: 14)."""
    hidden_size: int = Field(64, ge=8)
    """Width of the ViT."""
    num_layers: int = Field(2, ge=1)
    """Depth of the ViT."""
    num_attention_heads: int = Field(4, ge=1)
    """Attention heads; must divide hidden_size."""
    ffn_hidden_size: int = Field(256, ge=8)
    """Width of the ViT's MLP."""
    class_token: bool = False
    """Prepend a learned class token (OpenAI/HF CLIP ViTs have one; the connectors drop it)."""
    activation: Literal["gelu", "quick_gelu"] = "gelu"
    """MLP activation (OpenAI CLIP checkpoints use quick_gelu)."""
    norm_epsilon: float = Field(1e-5, gt=0)
    """LayerNorm epsilon."""
    objective: Literal["clip", "aim"] = "clip"
    """Encoder pre-training objective (MM1 Table 1): contrastive CLIP or reconstructive AIM."""
    clip: ClipHeadConfig = ClipHeadConfig()
    """The CLIP head (used when objective=clip)."""
    aim: AimHeadConfig = AimHeadConfig()
    """The AIM head (used when objective=aim)."""

    @model_validator(mode="after")
    def _shapes(self) -> EncoderConfig:
        if self.image_size % self.patch_size:
            below = self.image_size - self.image_size % self.patch_size
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}; "
                f"use {below} or {below + self.patch_size}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        return self

    @property
    def grid(self) -> int:
        """Patches per side: image_size / patch_size."""
        return self.image_size // self.patch_size


class ConnectorConfig(Section):
    """Maps encoder patches to ``num_tokens`` image tokens in the decoder's width."""

    kind: Literal["avg_pool", "attn_pool", "c_abstractor"] = "avg_pool"
    """Connector type. avg_pool: adaptive n x n average pooling of the patch grid + a linear
    projection; attn_pool: num_tokens learned queries cross-attending to the patches;
    c_abstractor: ResNet blocks -> adaptive average pool to n x n -> ResNet blocks -> MLP (Honeybee)."""
    num_tokens: int = Field(16, ge=1)
    """Image tokens per image (MM1: 64 or 144). avg_pool and c_abstractor need a square number."""
    num_heads: int = Field(4, ge=1)
    """Attention heads of attn_pool; must divide model.encoder.hidden_size."""
    depth: int = Field(2, ge=1)
    """ResNet blocks before and after the pooling in c_abstractor (Honeybee: 3)."""

    @model_validator(mode="after")
    def _square(self) -> ConnectorConfig:
        side = math.isqrt(self.num_tokens)
        if self.kind != "attn_pool" and side * side != self.num_tokens:
            lo, hi = side * side, (side + 1) ** 2
            raise ValueError(
                f"num_tokens={self.num_tokens} is not a square number, which kind={self.kind} needs; "
                f"use {lo} or {hi}, or kind=attn_pool"
            )
        return self


class DecoderConfig(Section):
    """The decoder-only LLM (megatron-core GPTModel)."""

    num_layers: int = Field(4, ge=1)
    """Transformer layers."""
    hidden_size: int = Field(128, ge=8)
    """Model width."""
    num_attention_heads: int = Field(4, ge=1)
    """Attention heads; must divide hidden_size."""
    num_query_groups: int | None = Field(None, ge=1)
    """Key/value heads for grouped-query attention; None = num_attention_heads (plain MHA)."""
    ffn_hidden_size: int = Field(384, ge=8)
    """Width of the MLP (per expert when MoE)."""
    seq_length: int = Field(256, ge=8)
    """Tokens per training sequence, image tokens included (MM1: 4096)."""
    position_embedding: Literal["rope", "learned_absolute"] = "rope"
    """Position encoding of the decoder."""
    normalization: Literal["RMSNorm", "LayerNorm"] = "RMSNorm"
    """Norm used in every layer."""
    activation: Literal["swiglu", "gelu"] = "swiglu"
    """MLP activation; swiglu doubles the first projection's width."""
    rotary_base: float = Field(10000.0, gt=0)
    """RoPE base (HF rope_theta)."""
    norm_epsilon: float = Field(1e-5, gt=0)
    """Epsilon of every norm (HF Llama rms_norm_eps)."""

    @model_validator(mode="after")
    def _heads(self) -> DecoderConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        if self.num_query_groups is not None and self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_query_groups={self.num_query_groups} must divide num_attention_heads={self.num_attention_heads}"
            )
        return self

    @property
    def query_groups(self) -> int:
        """Key/value heads actually used."""
        return self.num_query_groups or self.num_attention_heads


class MoEConfig(Section):
    """Mixture-of-experts decoder FFNs. num_experts=0 means a dense decoder."""

    num_experts: int = Field(0, ge=0)
    """Experts per MoE layer (MM1 3B-MoE: 64, 7B-MoE: 32); 0 disables MoE."""
    layer_freq: int = Field(2, ge=1)
    """Every layer_freq-th decoder layer is an MoE layer (MM1: 2 for 3B, 4 for 7B)."""
    top_k: int = Field(2, ge=1)
    """Experts each token is routed to."""
    aux_loss_coeff: float = Field(0.01, ge=0)
    """Weight of the load-balancing loss."""
    z_loss_coeff: float = Field(0.001, ge=0)
    """Weight of the router z-loss."""

    @model_validator(mode="after")
    def _topk(self) -> MoEConfig:
        if self.num_experts and self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        return self

    @property
    def enabled(self) -> bool:
        return self.num_experts > 0


class ModelConfig(Section):
    """The MM1 model: encoder -> connector -> decoder with image tokens spliced into the text."""

    encoder: EncoderConfig = EncoderConfig()
    """Image encoder."""
    connector: ConnectorConfig = ConnectorConfig()
    """Vision-language connector."""
    decoder: DecoderConfig = DecoderConfig()
    """Decoder LLM."""
    moe: MoEConfig = MoEConfig()
    """Mixture-of-experts settings of the decoder."""

    @model_validator(mode="after")
    def _pooling_fits(self) -> ModelConfig:
        con, grid = self.connector, self.encoder.grid
        if con.kind != "attn_pool" and math.isqrt(con.num_tokens) > grid:
            raise ValueError(
                f"connector.num_tokens={con.num_tokens}: {con.kind} pools the {grid}x{grid} patch grid, so it "
                f"can give at most {grid * grid} tokens; lower num_tokens or raise model.encoder.image_size"
            )
        if con.kind == "attn_pool" and self.encoder.hidden_size % con.num_heads:
            raise ValueError(
                f"connector.num_heads={con.num_heads} must divide model.encoder.hidden_size={self.encoder.hidden_size}"
            )
        if self.connector.num_tokens >= self.decoder.seq_length:
            raise ValueError(
                f"connector.num_tokens={self.connector.num_tokens} leaves no room for text in "
                f"decoder.seq_length={self.decoder.seq_length}"
            )
        return self
