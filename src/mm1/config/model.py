"""Config of the MM1 model: image encoder, vision-language connector, decoder, MoE."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from mm1.config.base import Section


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

    kind: Literal["avg_pool"] = "avg_pool"
    """Connector type. avg_pool: n x n average pooling of the patch grid, then a linear projection."""
    num_tokens: int = Field(16, ge=1)
    """Image tokens per image (MM1: 64 or 144). avg_pool needs a square number."""

    @model_validator(mode="after")
    def _square(self) -> ConnectorConfig:
        side = math.isqrt(self.num_tokens)
        if side * side != self.num_tokens:
            lo, hi = side * side, (side + 1) ** 2
            raise ValueError(f"num_tokens={self.num_tokens} is not a square number; use {lo} or {hi}")
        return self


class DecoderConfig(Section):
    """The decoder-only LLM (megatron-core GPTModel)."""

    num_layers: int = Field(4, ge=1)
    """Transformer layers."""
    hidden_size: int = Field(128, ge=8)
    """Model width."""
    num_attention_heads: int = Field(4, ge=1)
    """Attention heads; must divide hidden_size."""
    ffn_hidden_size: int = Field(384, ge=8)
    """Width of the MLP (per expert when MoE)."""
    seq_length: int = Field(64, ge=8)
    """Tokens per training sequence, image tokens included (MM1: 4096)."""
    position_embedding: Literal["rope", "learned_absolute"] = "rope"
    """Position encoding of the decoder."""
    normalization: Literal["RMSNorm", "LayerNorm"] = "RMSNorm"
    """Norm used in every layer."""
    activation: Literal["swiglu", "gelu"] = "swiglu"
    """MLP activation; swiglu doubles the first projection's width."""

    @model_validator(mode="after")
    def _heads(self) -> DecoderConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        return self


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
        side = math.isqrt(self.connector.num_tokens)
        grid = self.encoder.grid
        if self.connector.kind == "avg_pool" and grid % side:
            fits = [k * k for k in range(1, grid + 1) if grid % k == 0]
            raise ValueError(
                f"connector.num_tokens={self.connector.num_tokens}: avg_pool needs sqrt(num_tokens) to divide "
                f"the {grid}x{grid} patch grid; allowed: {fits}"
            )
        if self.connector.num_tokens >= self.decoder.seq_length:
            raise ValueError(
                f"connector.num_tokens={self.connector.num_tokens} leaves no room for text in "
                f"decoder.seq_length={self.decoder.seq_length}"
            )
        return self
