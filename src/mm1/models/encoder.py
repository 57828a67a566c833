"""The ViT image encoder: megatron-core's CLIPViTModel with bidirectional attention."""

from __future__ import annotations

import copy
import warnings

from mm1.config import EncoderConfig
from mm1.models.megatron_config import Layout, encoder_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.models.vision.clip_vit_model import CLIPViTModel
    from megatron.core.models.vision.vit_layer_specs import get_vit_layer_with_local_spec
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.torch_norm import WrappedTorchNorm


def vit_layer_spec():
    """megatron's local ViT layer spec, with the causal mask it defaults to in 0.16.1 removed."""
    spec = copy.deepcopy(get_vit_layer_with_local_spec())
    spec.submodules.self_attention.params = {"attn_mask_type": AttnMaskType.no_mask}
    return spec


def build_encoder(cfg: EncoderConfig, layout: Layout) -> CLIPViTModel:
    """Images (B, 3, H, W) -> patch features (B, grid*grid, hidden).

    The ViT is returned unwrapped: megatron collects its TP-sharded checkpoint tensors only from
    modules that define ``sharded_state_dict``; a plain wrapper would save one rank's shard as if
    it were replicated.
    """
    return CLIPViTModel(
        encoder_config(cfg, layout),
        vit_layer_spec(),
        ln_pre_impl=WrappedTorchNorm,  # megatron's default is TE/apex LayerNorm
        ln_post_impl=WrappedTorchNorm,
        add_class_token=False,
        patch_dim=cfg.patch_size,
        img_h=cfg.image_size,
        img_w=cfg.image_size,
    )
