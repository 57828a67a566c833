"""The three vision-language connectors: shapes, analytic parameter counts, gradients, references."""

from __future__ import annotations

import math

import pytest
import torch

from mm1.config import ConnectorConfig
from mm1.models.connector import (
    CONNECTORS,
    AttnPoolConnector,
    AvgPoolConnector,
    CAbstractor,
    build_connector,
)
from mm1.models.size import connector_params

KINDS = sorted(CONNECTORS)
HV, H = 8, 12  # tiny encoder / decoder widths
# (grid, N): divisible, non-divisible (the paper's 144 tokens at 224 px), the paper's 336 px settings, N = 1
GRIDS = [(4, 4), (6, 9), (16, 144), (24, 64), (24, 144), (4, 1)]


def make(kind: str, grid: int, num_tokens: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ConnectorConfig(kind=kind, num_tokens=num_tokens, num_heads=2, depth=1)
    return build_connector(cfg, HV, grid, H)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("grid", "num_tokens"), GRIDS)
def test_output_shape_and_analytic_param_count(kind: str, grid: int, num_tokens: int) -> None:
    conn = make(kind, grid, num_tokens)
    out = conn(torch.randn(2, grid * grid, HV))
    assert out.shape == (2, num_tokens, H)
    cfg = ConnectorConfig(kind=kind, num_tokens=num_tokens, num_heads=2, depth=1)
    assert connector_params(cfg, HV, grid, H) == sum(p.numel() for p in conn.parameters())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("depth", [1, 3])
def test_param_count_at_other_widths_and_depths(kind: str, depth: int) -> None:
    cfg = ConnectorConfig(kind=kind, num_tokens=9, num_heads=4, depth=depth)
    for hv, h in [(16, 16), (16, 24), (24, 8)]:
        conn = build_connector(cfg, hv, 6, h)
        assert connector_params(cfg, hv, 6, h) == sum(p.numel() for p in conn.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter_and_no_buffers(kind: str) -> None:
    conn = make(kind, 6, 9)
    out = conn(torch.randn(2, 36, HV))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in conn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert list(conn.buffers()) == []


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_gives_same_weights(kind: str) -> None:
    a, b, c = make(kind, 4, 4, seed=1), make(kind, 4, 4, seed=1), make(kind, 4, 4, seed=2)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
        if pa.std() > 0:  # norm gains and biases are constant, the weights are not
            assert not torch.equal(pa, pc), name


@pytest.mark.parametrize("kind", KINDS)
def test_build_connector_builds_the_named_kind(kind: str) -> None:
    cfg = ConnectorConfig(kind=kind, num_tokens=4, num_heads=2)
    assert type(build_connector(cfg, HV, 4, H)) is CONNECTORS[kind]
    assert {"avg_pool": AvgPoolConnector, "attn_pool": AttnPoolConnector, "c_abstractor": CAbstractor}[kind] is (
        CONNECTORS[kind]
    )


def test_avg_pool_is_block_mean_then_projection() -> None:
    grid, n, B = 6, 3, 2
    conn = make("avg_pool", grid, n * n)
    torch.nn.init.normal_(conn.proj.bias)
    patches = torch.randn(B, grid * grid, HV)  # patch p at row p // grid, column p % grid
    k = grid // n
    pooled = patches.reshape(B, n, k, n, k, HV).mean((2, 4)).reshape(B, n * n, HV)  # (B, N, Hv)
    torch.testing.assert_close(conn(patches), pooled @ conn.proj.weight.T + conn.proj.bias)


def test_attn_pool_non_square_token_count() -> None:
    conn = make("attn_pool", 4, 10)
    assert conn(torch.randn(3, 16, HV)).shape == (3, 10, H)


def test_attn_pool_every_query_sees_every_patch() -> None:
    conn = make("attn_pool", 4, 5)
    patches = torch.randn(1, 16, HV)
    for p in (0, 7, 15):
        moved = patches.clone()
        moved[0, p] = torch.randn(HV)  # not a constant shift: the key/value LayerNorm removes those
        changed = (conn(moved) - conn(patches)).abs().amax(-1)[0]  # (N,)
        assert (changed > 0).all(), (p, changed)


def test_attn_pool_is_invariant_to_patch_order() -> None:
    """Without position embeddings, cross-attention is invariant to permuting the patches."""
    conn = make("attn_pool", 4, 5)
    patches = torch.randn(2, 16, HV)
    perm = torch.randperm(16)
    torch.testing.assert_close(conn(patches[:, perm]), conn(patches))


@pytest.mark.parametrize(("grid", "num_tokens"), [(6, 9), (16, 144)])
def test_c_abstractor_output_depends_on_every_patch(grid: int, num_tokens: int) -> None:
    conn = make("c_abstractor", grid, num_tokens)
    patches = torch.randn(1, grid * grid, HV, requires_grad=True)
    out = conn(patches)
    (out * torch.randn_like(out)).sum().backward()
    assert (patches.grad.abs().sum(-1) > 0).all()


def test_pooling_connectors_reject_a_pooled_grid_larger_than_the_patch_grid() -> None:
    for kind in ("avg_pool", "c_abstractor"):
        with pytest.raises(ValueError, match="num_tokens=25"):
            build_connector(ConnectorConfig(kind=kind, num_tokens=25), HV, 4, H)
    with pytest.raises(ValueError, match="num_heads=3"):
        build_connector(ConnectorConfig(kind="attn_pool", num_heads=3), HV, 4, H)


def test_paper_vit_l_336_param_counts() -> None:
    """Hv=1024 (ViT-L), grid 24 (336 px / 14), N=144, H=2048 (3B decoder), depth 3, 16 heads."""
    counts = {
        kind: connector_params(ConnectorConfig(kind=kind, num_tokens=144, num_heads=16, depth=3), 1024, 24, 2048)
        for kind in KINDS
    }
    assert counts["avg_pool"] == 1024 * 2048 + 2048
    assert counts["attn_pool"] == 144 * 1024 + 4 * 1024 + 4 * (1024 * 1024 + 1024) + 1024 * 2048 + 2048
    # C-Abstractor, width W = Hv = 1024 (Honeybee's); ChannelNorms hold 2W each; squeeze-excite to W / 4
    block = 1024 * 1024 + 2 * 1024 + 9 * 1024 + 2 * 1024  # 1x1 conv, norm, 3x3 depthwise, norm
    block += (1024 * 256 + 256) + (256 * 1024 + 1024)  # squeeze-excite
    block += 1024 * 1024 + 2 * 1024  # 1x1 conv, norm; identity shortcut (Hv = W)
    readout = (1024 * 2048 + 2048) + (2048 * 2048 + 2048)  # W -> H -> H
    assert counts["c_abstractor"] == 6 * block + readout == 22_124_032


def test_attn_pool_matches_a_per_head_softmax_reference() -> None:
    conn = make("attn_pool", 4, 3)
    for p in conn.parameters():  # leave the near-uniform attention of the 0.02 init
        torch.nn.init.normal_(p, std=0.5)
    patches = torch.randn(2, 16, HV)  # (B, P, Hv)
    kv = conn.kv(conn.kv_norm(patches))  # (B, P, 2Hv)
    k, v, q = kv[..., :HV], kv[..., HV:], conn.q(conn.queries)  # (B, P, Hv), (B, P, Hv), (N, Hv)
    d = HV // 2
    heads = []
    for i in range(2):
        s = slice(i * d, (i + 1) * d)
        attn = torch.softmax(q[:, s] @ k[..., s].transpose(1, 2) / math.sqrt(d), dim=-1)  # (B, N, P)
        heads.append(attn @ v[..., s])  # (B, N, d)
    expected = conn.proj(conn.proj_norm(conn.out(torch.cat(heads, -1))))  # (B, N, H)
    torch.testing.assert_close(conn(patches), expected)
