"""Vision-language connectors: encoder patches (B, P, Hv) -> N image tokens (B, N, H).

The three connectors MM1 ablates (paper Sec. 3.2, Fig. 4), all mapping the ViT's ``P = grid * grid``
patch features of width ``Hv`` to ``N = cfg.num_tokens`` tokens of the decoder's width ``H``:

* ``avg_pool``     -- adaptive n x n average pooling of the patch grid, then a linear projection;
* ``attn_pool``    -- N learned queries cross-attending to the patches, then a projection;
* ``c_abstractor`` -- Honeybee's C-Abstractor: ResNet (RegNet bottleneck) blocks, adaptive average
  pooling to n x n, more ResNet blocks, an MLP readout.

Pooling is adaptive, so the grid need not be a multiple of n = sqrt(N) (the paper's 144 tokens from a
16 x 16 grid at 224 px use overlapping windows).

Tensor parallelism: a connector is replicated on every TP rank. It is small, and its input -- the ViT
output, all-reduced by megatron's row-parallel layers -- is identical on every TP rank, so every rank
computes the same image tokens. Megatron's ``sharded_state_dict`` saves these plain torch modules as
replicated tensors. The connectors hold no buffers (no BatchNorm), and their initialisation depends only
on the torch seed: weights ~ N(0, 0.02), biases 0, norm gains 1.

:func:`mm1.models.size.connector_params` gives each connector's parameter count by arithmetic alone,
for the presets; ``tests/models/test_connectors.py`` holds it equal to these modules.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mm1.config import ConnectorConfig
from mm1.models.size import se_width

INIT_STD = 0.02


def _init(module: torch.nn.Module) -> None:
    """Re-initialise every Linear/Conv2d below ``module``: weight ~ N(0, 0.02), bias 0 (norms keep 1/0)."""
    for m in module.modules():
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=INIT_STD)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


def _pooled_side(cfg: ConnectorConfig, grid: int) -> int:
    """n = sqrt(N), the side of the pooled grid; it must fit in the patch grid."""
    side = math.isqrt(cfg.num_tokens)
    if side > grid:
        raise ValueError(
            f"connector.num_tokens={cfg.num_tokens} needs a {side}x{side} pooled grid, larger than the "
            f"{grid}x{grid} patch grid; lower num_tokens or raise the image size"
        )
    return side


# --- average pooling ----------------------------------------------------------------------------


class AvgPoolConnector(torch.nn.Module):
    """MM1's average-pooling connector: adaptive n x n average pooling of the patch grid + a linear projection.

    (B, P, Hv) -> grid view (B, Hv, g, g) -> pool (B, Hv, n, n) -> tokens (B, N, Hv) -> project (B, N, H).
    """

    def __init__(self, cfg: ConnectorConfig, encoder_width: int, grid: int, decoder_width: int) -> None:
        super().__init__()
        self.side = _pooled_side(cfg, grid)
        self.grid = grid
        self.proj = torch.nn.Linear(encoder_width, decoder_width)
        _init(self)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, p, hv = patches.shape
        x = patches.transpose(1, 2).reshape(b, hv, self.grid, self.grid)  # (B, Hv, g, g)
        x = F.adaptive_avg_pool2d(x, self.side)  # (B, Hv, n, n)
        x = x.flatten(2).transpose(1, 2)  # (B, N, Hv)
        return self.proj(x)  # (B, N, H)


# --- attention pooling --------------------------------------------------------------------------


class AttnPoolConnector(torch.nn.Module):
    """Attention pooling: N learned queries cross-attend (multi-head) to the patches, then a projection.

    keys/values: LayerNorm (B, P, Hv) -> Linear (B, P, 2Hv) -> k, v (B, heads, P, d), d = Hv / heads;
    queries: learned (N, Hv) -> Linear -> (B, heads, N, d); softmax(q k^T / sqrt(d)) v -> (B, heads, N, d)
    -> merge heads (B, N, Hv) -> output Linear (B, N, Hv) -> LayerNorm + Linear -> (B, N, H).
    N need not be square.
    """

    def __init__(self, cfg: ConnectorConfig, encoder_width: int, grid: int, decoder_width: int) -> None:
        super().__init__()
        if encoder_width % cfg.num_heads:
            raise ValueError(f"connector.num_heads={cfg.num_heads} must divide the encoder width {encoder_width}")
        self.heads = cfg.num_heads
        self.queries = torch.nn.Parameter(torch.empty(cfg.num_tokens, encoder_width))
        self.kv_norm = torch.nn.LayerNorm(encoder_width)
        self.q = torch.nn.Linear(encoder_width, encoder_width)
        self.kv = torch.nn.Linear(encoder_width, 2 * encoder_width)
        self.out = torch.nn.Linear(encoder_width, encoder_width)
        self.proj_norm = torch.nn.LayerNorm(encoder_width)
        self.proj = torch.nn.Linear(encoder_width, decoder_width)
        torch.nn.init.normal_(self.queries, std=INIT_STD)
        _init(self)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, p, hv = patches.shape
        n, h = self.queries.shape[0], self.heads
        kv = self.kv(self.kv_norm(patches))  # (B, P, 2Hv)
        k, v = kv.view(b, p, 2, h, hv // h).permute(2, 0, 3, 1, 4)  # each (B, heads, P, d)
        q = self.q(self.queries).view(n, h, hv // h).transpose(0, 1)  # (heads, N, d)
        q = q.unsqueeze(0).expand(b, -1, -1, -1)  # (B, heads, N, d)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        x = self.out(x.transpose(1, 2).reshape(b, n, hv))  # (B, N, Hv)
        return self.proj(self.proj_norm(x))  # (B, N, H)


# --- C-Abstractor (Honeybee) --------------------------------------------------------------------


class ChannelNorm(torch.nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a (B, C, h, w) map (Honeybee's LayerNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x.permute(0, 2, 3, 1))  # (B, h, w, C)
        return x.permute(0, 3, 1, 2)  # (B, C, h, w)


class RegBlock(torch.nn.Module):
    """RegNet-Y bottleneck as Honeybee uses it (timm ``Bottleneck``, bottle_ratio 1, group size 1, SE 0.25).

    (B, Cin, h, w) -> 1x1 conv, norm, SiLU (B, C, h, w) -> 3x3 depthwise conv, norm, SiLU -> squeeze-excite
    (per-channel gate from the spatial mean) -> 1x1 conv, norm -> + shortcut (identity, or 1x1 conv + norm
    when Cin != C) -> SiLU -> (B, C, h, w). Convolutions have no bias (the norm follows); ChannelNorm, not
    BatchNorm, so there are no running statistics.
    """

    def __init__(self, c_in: int, c: int) -> None:
        super().__init__()
        rd = se_width(c_in)
        self.conv1 = torch.nn.Conv2d(c_in, c, 1, bias=False)
        self.norm1 = ChannelNorm(c)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.norm2 = ChannelNorm(c)
        self.se_reduce = torch.nn.Linear(c, rd)
        self.se_expand = torch.nn.Linear(rd, c)
        self.conv3 = torch.nn.Conv2d(c, c, 1, bias=False)
        self.norm3 = ChannelNorm(c)
        self.shortcut = (
            torch.nn.Sequential(torch.nn.Conv2d(c_in, c, 1, bias=False), ChannelNorm(c))
            if c_in != c
            else torch.nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.norm1(self.conv1(x)))  # (B, C, h, w)
        y = F.silu(self.norm2(self.conv2(y)))  # (B, C, h, w)
        gate = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(y.mean((2, 3))))))  # (B, C)
        y = self.norm3(self.conv3(y * gate[:, :, None, None]))  # (B, C, h, w)
        return F.silu(y + self.shortcut(x))  # (B, C, h, w)


class CAbstractor(torch.nn.Module):
    """Honeybee's C-Abstractor: convolutional ResNet stages around an adaptive average pool, then an MLP.

    (B, P, Hv) -> grid view (B, Hv, g, g) -> ``depth`` RegBlocks (B, W, g, g) -> adaptive average pool
    (B, W, n, n) -> ``depth`` RegBlocks (B, W, n, n) -> tokens (B, N, W) -> Linear, SiLU, Linear (B, N, H).

    The abstractor width W is the encoder width Hv (Honeybee makes it a separate setting, 1024 in its
    configs, i.e. its ViT-L's width), so the stages cost the same at any decoder size; the readout
    MLP is W -> H -> H as in Honeybee. Honeybee's learned position
    embedding on the input is left out: the ViT features already carry their positions.
    """

    def __init__(self, cfg: ConnectorConfig, encoder_width: int, grid: int, decoder_width: int) -> None:
        super().__init__()
        self.side = _pooled_side(cfg, grid)
        self.grid = grid
        width = encoder_width
        self.stage1 = torch.nn.Sequential(
            *(RegBlock(encoder_width if i == 0 else width, width) for i in range(cfg.depth))
        )
        self.stage2 = torch.nn.Sequential(*(RegBlock(width, width) for _ in range(cfg.depth)))
        self.readout = torch.nn.Sequential(
            torch.nn.Linear(width, decoder_width), torch.nn.SiLU(), torch.nn.Linear(decoder_width, decoder_width)
        )
        _init(self)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, p, hv = patches.shape
        x = patches.transpose(1, 2).reshape(b, hv, self.grid, self.grid)  # (B, Hv, g, g)
        x = self.stage1(x)  # (B, W, g, g)
        x = F.adaptive_avg_pool2d(x, self.side)  # (B, W, n, n)
        x = self.stage2(x)  # (B, W, n, n)
        x = x.flatten(2).transpose(1, 2)  # (B, N, W)
        return self.readout(x)  # (B, N, H)


# --- registry -----------------------------------------------------------------------------------

CONNECTORS: dict[str, type[AvgPoolConnector | AttnPoolConnector | CAbstractor]] = {
    "avg_pool": AvgPoolConnector,
    "attn_pool": AttnPoolConnector,
    "c_abstractor": CAbstractor,
}


def build_connector(cfg: ConnectorConfig, encoder_width: int, grid: int, decoder_width: int) -> torch.nn.Module:
    """The connector ``cfg.kind`` names, mapping (B, grid*grid, encoder_width) -> (B, N, decoder_width)."""
    return CONNECTORS[cfg.kind](cfg, encoder_width, grid, decoder_width)
