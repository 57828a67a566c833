"""AIM pre-training of the image encoder (MM1 Table 1): autoregressive next-patch pixel regression.

The ViT reads the patches in raster order under a prefix-causal mask: the first ``prefix``
patches see each other (as the bidirectional encoder will at MM1 time), every later patch sees
the prefix and the patches before it. An MLP head predicts patch i+1's pixels from position i;
the loss is the MSE over the patches after the prefix only.

The ViT is ``self.encoder``, built like MM1's (only the mask type differs, which holds no
weights), so its ``encoder.*`` checkpoint tensors load into the bidirectional MM1 encoder.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from mm1.config import EncoderConfig
from mm1.models.encoder import build_encoder, patch_features
from mm1.models.megatron_config import MegatronLayout, encoder_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.module import MegatronModule


def prefix_causal_mask(num_patches: int, prefix: int, class_token: bool = False) -> torch.Tensor:
    """(1, 1, S, S) bool, True = masked out, S = class_token + num_patches.

    Query i may attend key j when j is in the prefix or j <= i. A class token counts as part of
    the prefix.
    """
    s, visible = int(class_token) + num_patches, int(class_token) + prefix
    i = torch.arange(s).unsqueeze(1)
    j = torch.arange(s).unsqueeze(0)
    return ((j > i) & (j >= visible)).reshape(1, 1, s, s)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, P, patch_size * patch_size * 3), patches in raster order (the ViT's)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def aim_loss(predictions: torch.Tensor, patches: torch.Tensor, prefix: int, normalize: bool) -> torch.Tensor:
    """MSE of the predicted pixels of the patches after the prefix.

    predictions: (B, P-1, D), row i predicting patch i+1; patches: (B, P, D) as from
    :func:`patchify`. With ``normalize`` each target patch is standardised over its own pixels.
    """
    targets = patches[:, prefix:]  # (B, P - prefix, D)
    if normalize:
        mean, var = targets.mean(dim=-1, keepdim=True), targets.var(dim=-1, keepdim=True, unbiased=False)
        targets = (targets - mean) / (var + 1e-6).sqrt()
    return F.mse_loss(predictions[:, prefix - 1 :], targets)


class PixelHead(nn.Module):
    """(B, N, hidden) -> (B, N, pixels): residual MLP blocks, then a linear map to the pixels."""

    def __init__(self, hidden: int, width: int, layers: int, pixels: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, hidden))
            for _ in range(layers)
        )
        self.out = nn.Linear(hidden, pixels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


class AimModel(MegatronModule):
    """forward(images, prefix=None, generator=None) -> the next-patch pixel MSE (scalar)."""

    def __init__(self, cfg: EncoderConfig, layout: MegatronLayout | None = None) -> None:
        layout = layout or MegatronLayout()
        super().__init__(config=encoder_config(cfg, layout))
        self.cfg = cfg
        self.num_patches = cfg.grid * cfg.grid
        if self.num_patches < 2:
            raise ValueError(f"AIM needs at least 2 patches; image_size={cfg.image_size}, patch_size={cfg.patch_size}")
        self.encoder = build_encoder(cfg, layout, AttnMaskType.arbitrary)  # mask passed in forward
        self.head = PixelHead(cfg.hidden_size, cfg.aim.head_hidden_size, cfg.aim.head_layers, 3 * cfg.patch_size**2)

    def sample_prefix(self, generator: torch.Generator | None = None) -> int:
        """A prefix length drawn uniformly from [1, P-1] (one per batch)."""
        return int(torch.randint(1, self.num_patches, (1,), generator=generator))

    def predict(self, images: torch.Tensor, prefix: int) -> torch.Tensor:
        """(B, 3, H, W) -> (B, P-1, pixels): row i predicts patch i+1 under a ``prefix``-causal mask."""
        if not 1 <= prefix < self.num_patches:
            raise ValueError(f"prefix={prefix} must lie in [1, {self.num_patches - 1}] for {self.num_patches} patches")
        mask = prefix_causal_mask(self.num_patches, prefix, self.cfg.class_token).to(images.device)
        features = patch_features(self.encoder(images, attention_mask=mask), self.cfg)  # (B, P, hidden)
        return self.head(features[:, :-1])

    def forward(
        self, images: torch.Tensor, prefix: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        prefix = self.sample_prefix(generator) if prefix is None else prefix
        predictions = self.predict(images, prefix)
        return aim_loss(predictions, patchify(images, self.cfg.patch_size), prefix, self.cfg.aim.normalize_pixels)
