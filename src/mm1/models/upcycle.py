"""Sparse upcycling: turn a dense MM1 checkpoint into a mixture-of-experts one.

Every decoder layer that is MoE in the target config gets ``num_experts`` copies of the dense
layer's FFN and a freshly drawn router; everything else (ViT, connector, attention, norms,
embeddings, the layers that stay dense) is copied unchanged. The router's softmax top-k weights
sum to 1 (megatron's default ``moe_router_pre_softmax=False``), so a token's output is
``sum_k p_k * FFN(x) = FFN(x)``: before any training the upcycled model computes the same function
as its dense parent, whatever the router says.

This module maps state dicts; :func:`mm1.train.upcycle.upcycle_checkpoint` reads and writes the
checkpoints.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from mm1.config import ModelConfig
from mm1.models.size import moe_layer_indices

ROUTER_INIT_STD = 0.02
"""Std of the normal draw for the new routers (megatron's init_method_std for the decoder)."""

# State-dict keys of megatron's layer specs (no grouped GEMM):
# dense   language_model.decoder.layers.<i>.mlp.linear_fc1.weight
# MoE     language_model.decoder.layers.<i>.mlp.experts.local_experts.<e>.linear_fc1.weight
#         language_model.decoder.layers.<i>.mlp.router.weight
# Transformer-Engine builds fuse a dense layer's pre-MLP norm into linear_fc1
# (mlp.linear_fc1.layer_norm_weight/_bias); their MoE layers keep it as pre_mlp_layernorm.weight/bias.
_DENSE_FFN = re.compile(
    r"^(?P<layer>language_model\.decoder\.layers\.(?P<index>\d+)\.)mlp\.(?P<rest>linear_fc[12]\..+)$"
)
_FUSED_NORM = re.compile(r"^linear_fc1\.layer_norm_(?P<param>weight|bias)$")


def _differences(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if a == b else [f"{path}: dense {a!r} vs moe {b!r}"]


def check_upcyclable(dense_cfg: ModelConfig, moe_cfg: ModelConfig) -> None:
    """Raise ``ValueError`` unless ``moe_cfg`` is ``dense_cfg`` with MoE switched on."""
    if dense_cfg.moe.enabled:
        raise ValueError(
            f"the parent model is already MoE (model.moe.num_experts={dense_cfg.moe.num_experts}); "
            "upcycle a dense checkpoint (num_experts=0)"
        )
    if not moe_cfg.moe.enabled:
        raise ValueError("the target config is dense (model.moe.num_experts=0); set model.moe.num_experts > 0")
    dense = dense_cfg.model_dump(mode="json", exclude={"moe"})
    moe = moe_cfg.model_dump(mode="json", exclude={"moe"})
    diff = _differences(dense, moe, "model")
    if diff:
        raise ValueError(
            "upcycling keeps every weight but the decoder FFNs, so the MoE config must equal the dense one "
            f"except model.moe; these differ: {'; '.join(diff)}"
        )


def upcycle_state(
    dense_state: dict[str, Any], dense_cfg: ModelConfig, moe_cfg: ModelConfig, seed: int = 0
) -> dict[str, Any]:
    """Map a dense MM1Model state dict (one process, full tensors) to the MoE model's.

    Expert tensors alias the dense FFN tensors (``load_state_dict`` copies them into each expert).
    Routers are drawn from N(0, ROUTER_INIT_STD^2) with a generator seeded by ``seed``, layer by
    layer in increasing order, independent of the global RNG.
    """
    check_upcyclable(dense_cfg, moe_cfg)
    layers = set(moe_layer_indices(moe_cfg.decoder.num_layers, moe_cfg.moe))  # megatron's rule
    experts = moe_cfg.moe.num_experts
    out: dict[str, Any] = {}
    ffn_seen: set[int] = set()
    for key, value in dense_state.items():
        match = _DENSE_FFN.match(key)
        if match is None or int(match["index"]) not in layers:
            out[key] = value
            continue
        ffn_seen.add(int(match["index"]))
        norm = _FUSED_NORM.match(match["rest"])
        if norm:
            out[f"{match['layer']}pre_mlp_layernorm.{norm['param']}"] = value
            continue
        for e in range(experts):
            out[f"{match['layer']}mlp.experts.local_experts.{e}.{match['rest']}"] = value
    missing = sorted(layers - ffn_seen)
    if missing:
        raise ValueError(
            f"the dense state has no FFN weights (mlp.linear_fc1/linear_fc2) for decoder layers {missing}; "
            "pass the full single-process state dict of a dense MM1Model"
        )
    gen = torch.Generator().manual_seed(seed)
    hidden = moe_cfg.decoder.hidden_size
    for i in sorted(layers):
        router = torch.randn(experts, hidden, generator=gen, dtype=torch.float32) * ROUTER_INIT_STD
        out[f"language_model.decoder.layers.{i}.mlp.router.weight"] = router
    return out
