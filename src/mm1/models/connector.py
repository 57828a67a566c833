"""Vision-language connectors: encoder patches (B, P, Hv) -> N image tokens (B, N, H)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mm1.config import ConnectorConfig


class AvgPoolConnector(torch.nn.Module):
    """MM1's average-pooling connector: n x n average pooling of the patch grid + a linear projection."""

    def __init__(self, cfg: ConnectorConfig, encoder_width: int, grid: int, decoder_width: int) -> None:
        super().__init__()
        self.side = math.isqrt(cfg.num_tokens)
        self.grid = grid
        self.proj = torch.nn.Linear(encoder_width, decoder_width)
        torch.nn.init.normal_(self.proj.weight, std=0.02)
        torch.nn.init.zeros_(self.proj.bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, p, hv = patches.shape
        x = patches.transpose(1, 2).reshape(b, hv, self.grid, self.grid)  # (B, Hv, g, g)
        x = F.adaptive_avg_pool2d(x, self.side)  # (B, Hv, n, n)
        x = x.flatten(2).transpose(1, 2)  # (B, N, Hv)
        return self.proj(x)  # (B, N, H)


CONNECTORS = {"avg_pool": AvgPoolConnector}


def build_connector(cfg: ConnectorConfig, encoder_width: int, grid: int, decoder_width: int) -> torch.nn.Module:
    return CONNECTORS[cfg.kind](cfg, encoder_width, grid, decoder_width)
