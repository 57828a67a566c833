"""The ViT image encoder: megatron-core's CLIPViTModel, bidirectional by default.

megatron's CLIPViTModel has no position-embedding interpolation ("missing features like position
embedding interpolation", clip_vit_model.py); :func:`interpolate_position_embeddings` supplies it
for loading an encoder trained at one resolution into one built for another (MM1: 224 -> 336/378).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from mm1.config import EncoderConfig
from mm1.models.attention import with_sdpa
from mm1.models.megatron_config import MegatronLayout, compile_layers, encoder_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.models.vision.clip_vit_model import CLIPViTModel
    from megatron.core.models.vision.vit_layer_specs import get_vit_layer_with_local_spec
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.torch_norm import WrappedTorchNorm


def vit_layer_spec(attn_mask_type: AttnMaskType = AttnMaskType.no_mask, attention_backend: str = "auto"):
    """megatron's local ViT layer spec with ``attn_mask_type`` in place of the causal mask it
    defaults to in 0.16.1 (vit_layer_specs.get_vit_layer_with_local_spec).

    ``no_mask``: bidirectional (CLIP, MM1). ``arbitrary``: the caller passes a boolean mask to
    ``forward(x, attention_mask=...)`` (AIM's prefix-causal mask). ``attention_backend``: the SDPA
    kernel the core attention asks for (parallel.attention_backend).
    """
    spec = with_sdpa(get_vit_layer_with_local_spec(), attention_backend)
    spec.submodules.self_attention.params = {"attn_mask_type": attn_mask_type}
    return spec


def build_encoder(
    cfg: EncoderConfig, layout: MegatronLayout, attn_mask_type: AttnMaskType = AttnMaskType.no_mask
) -> CLIPViTModel:
    """Images (B, 3, H, W) -> features (B, class_token + grid*grid, hidden).

    With ``cfg.class_token`` the first feature is the class token's; :func:`patch_features`
    drops it for the connectors. ``attn_mask_type`` changes no parameter: a ViT built with any
    mask type has the same state-dict keys and shapes.

    The ViT is returned unwrapped: megatron collects its TP-sharded checkpoint tensors only from
    modules that define ``sharded_state_dict``; a plain wrapper would save one rank's shard as if
    it were replicated. With ``layout.compile_layers`` each ViT layer is compiled.
    """
    vit = CLIPViTModel(
        encoder_config(cfg, layout),
        vit_layer_spec(attn_mask_type, layout.attention_backend),
        ln_pre_impl=WrappedTorchNorm,  # megatron's default is TE/apex LayerNorm
        ln_post_impl=WrappedTorchNorm,
        add_class_token=cfg.class_token,
        class_token_len=1,
        patch_dim=cfg.patch_size,
        img_h=cfg.image_size,
        img_w=cfg.image_size,
    )
    if layout.compile_layers:
        compile_layers(vit.decoder)
    return vit


def patch_features(features: torch.Tensor, cfg: EncoderConfig) -> torch.Tensor:
    """The encoder's per-patch features (B, grid*grid, hidden), class token removed."""
    return features[:, 1:] if cfg.class_token else features


def interpolate_position_embeddings(weight: torch.Tensor, class_token: bool, new_grid: int) -> torch.Tensor:
    """Resize a ViT's learned position embeddings to a ``new_grid`` x ``new_grid`` patch grid.

    weight: (class_token + g*g, H), patches in raster order. The g x g grid is resized bicubically
    (align_corners=False, no antialiasing); the class token's row is kept as it is. The same grid
    returns an unchanged copy.
    """
    cls, grid = weight[: int(class_token)], weight[int(class_token) :]
    g = math.isqrt(grid.shape[0])
    if g * g != grid.shape[0]:
        raise ValueError(
            f"position embeddings of shape {tuple(weight.shape)} (class_token={class_token}) do not hold "
            f"a square patch grid: {grid.shape[0]} rows"
        )
    if new_grid == g:
        return weight.clone()
    h = weight.shape[1]
    image = grid.reshape(g, g, h).permute(2, 0, 1).unsqueeze(0)  # (1, H, g, g)
    resized = F.interpolate(
        image.float(), size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=False
    )
    resized = resized.to(weight.dtype).squeeze(0).permute(1, 2, 0).reshape(new_grid * new_grid, h)
    return torch.cat([cls, resized], dim=0)
