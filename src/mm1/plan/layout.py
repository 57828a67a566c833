"""A cluster layout (the parallel section plus the batch split) and the rules it must obey.

The planner searches many layouts for one model, so a layout is a small dataclass checked here,
without building a RunConfig for each; :func:`apply` turns the chosen one into a validated config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mm1.config import RunConfig
from mm1.config.load import from_dict

Recompute = Literal["none", "selective", "full"]


class PlanError(ValueError):
    """A layout that does not divide or does not fit; the message names the field and the fix."""


# Each ClusterLayout field and the config section that holds it (of, apply and overrides map through this).
SECTION = {
    "world_size": "parallel",
    "gpus_per_node": "parallel",
    "tp": "parallel",
    "pp": "parallel",
    "ep": "parallel",
    "micro_batch_size": "train",
    "global_batch_size": "train",
    "recompute": "parallel",
    "distributed_optimizer": "parallel",
    "sequence_parallel": "parallel",
    "overlap_grad_reduce": "parallel",
}


@dataclass(frozen=True)
class ClusterLayout:
    """Where the processes go and how a global batch is split among them."""

    world_size: int
    gpus_per_node: int
    tp: int
    pp: int
    ep: int
    micro_batch_size: int
    global_batch_size: int
    recompute: Recompute
    distributed_optimizer: bool
    sequence_parallel: bool = False
    overlap_grad_reduce: bool = False

    @classmethod
    def of(cls, cfg: RunConfig) -> ClusterLayout:
        """The layout a config states (gpus_per_node None = every process on one node)."""
        values = {name: getattr(getattr(cfg, section), name) for name, section in SECTION.items()}
        return cls(**{**values, "gpus_per_node": values["gpus_per_node"] or cfg.parallel.world_size})

    @property
    def nodes(self) -> int:
        return self.world_size // self.gpus_per_node

    @property
    def dp(self) -> int:
        """Data-parallel size: world_size / (tp * pp)."""
        return self.world_size // (self.tp * self.pp)

    @property
    def micro_batches(self) -> int:
        """Micro-batches per step on each data-parallel rank (gradient accumulation steps)."""
        return self.global_batch_size // (self.micro_batch_size * self.dp)


def problems(layout: ClusterLayout, cfg: RunConfig) -> list[str]:
    """Every rule ``layout`` breaks for ``cfg``'s model, each naming the field and the fix ([] = none)."""
    lay, dec, enc, moe = layout, cfg.model.decoder, cfg.model.encoder, cfg.model.moe
    out = []
    if lay.world_size % lay.gpus_per_node:
        out.append(
            f"parallel.world_size={lay.world_size} is not divisible by parallel.gpus_per_node={lay.gpus_per_node}: "
            f"use nodes x {lay.gpus_per_node} processes"
        )
    if lay.tp > lay.gpus_per_node or lay.gpus_per_node % lay.tp:
        out.append(
            f"parallel.tp={lay.tp} must divide parallel.gpus_per_node={lay.gpus_per_node}: "
            "tensor parallelism stays inside a node; lower parallel.tp"
        )
    if lay.sequence_parallel and lay.tp == 1:
        out.append("parallel.sequence_parallel=true needs parallel.tp > 1: set it false or raise parallel.tp")
    if lay.sequence_parallel and dec.seq_length % lay.tp:
        out.append(
            f"parallel.sequence_parallel=true splits model.decoder.seq_length={dec.seq_length} over "
            f"parallel.tp={lay.tp}: use a tp that divides it or set parallel.sequence_parallel=false"
        )
    for field, value in (
        ("decoder.num_attention_heads", dec.num_attention_heads),
        ("decoder.num_query_groups", dec.query_groups),
        ("decoder.ffn_hidden_size", dec.ffn_hidden_size),
        ("encoder.num_attention_heads", enc.num_attention_heads),
        ("encoder.ffn_hidden_size", enc.ffn_hidden_size),
    ):
        if value % lay.tp:
            out.append(f"parallel.tp={lay.tp} must divide model.{field}={value}: use a divisor of {value}")
    if dec.num_layers % lay.pp:
        out.append(
            f"parallel.pp={lay.pp} must divide model.decoder.num_layers={dec.num_layers}: "
            f"use a divisor of {dec.num_layers}"
        )
    if lay.world_size % (lay.tp * lay.pp):
        out.append(
            f"parallel.world_size={lay.world_size} is not divisible by parallel.tp x parallel.pp = {lay.tp * lay.pp}"
        )
        return out  # dp below would be meaningless
    if lay.ep > 1 and not moe.enabled:
        out.append(f"parallel.ep={lay.ep} needs an MoE decoder: set parallel.ep=1 or model.moe.num_experts")
    if moe.enabled and moe.num_experts % lay.ep:
        out.append(
            f"parallel.ep={lay.ep} must divide model.moe.num_experts={moe.num_experts}: "
            f"use a divisor of {moe.num_experts}"
        )
    if lay.dp % lay.ep:
        out.append(f"parallel.ep={lay.ep} must divide the data-parallel size dp={lay.dp}")
    per_step = lay.micro_batch_size * lay.dp
    if lay.global_batch_size % per_step:
        out.append(
            f"train.global_batch_size={lay.global_batch_size} must be a multiple of "
            f"train.micro_batch_size x dp = {lay.micro_batch_size} x {lay.dp} = {per_step}"
        )
    return out


def apply(cfg: RunConfig, layout: ClusterLayout) -> RunConfig:
    """``cfg`` with ``layout``'s parallel section and batch sizes, validated."""
    data = cfg.model_dump()
    for name, section in SECTION.items():
        data[section][name] = getattr(layout, name)
    return from_dict(data, f"{cfg.name} with a planned layout")


def overrides(layout: ClusterLayout) -> list[str]:
    """``--set`` arguments that put ``layout`` into a config."""
    values = {name: getattr(layout, name) for name in SECTION}
    return [f"{SECTION[k]}.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]
