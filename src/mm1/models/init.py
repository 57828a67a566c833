"""Initial weights that do not depend on the parallel layout.

megatron draws each rank's weights from that rank's RNG stream: under pipeline parallelism a stage
draws only its own layers, under expert parallelism every rank draws its local experts from the same
stream (experts 2-3 of 4 start as copies of 0-1 on EP=2), and the ViT and connector take whatever the
global stream holds after the decoder. :func:`init_weights` redraws every parameter of a model chunk
so that the FULL tensor is the same for every TP/PP/EP layout; each rank keeps its shard.

For each parameter, under its *global* name (global layer index under PP, global expert index under
EP, e.g. ``language_model.decoder.layers.3.mlp.experts.local_experts.6.linear_fc1.weight``):

* a CPU generator is seeded from sha256(seed, global name), so one tensor's draw does not depend on
  which other tensors this rank holds, nor on the order they are visited;
* the full fp32 tensor is drawn -- biases 0, norm gains 1; output projections (``linear_proj``,
  ``linear_fc2``) with the owning TransformerConfig's ``output_layer_init_method`` (megatron's
  N(0, 0.02 / sqrt(2 * num_layers))); every other weight -- QKV, fc1, embeddings, LM head, router,
  ViT patch conv / position embeddings / class token, the connectors -- with its ``init_method``
  (N(0, 0.02));
* this rank's shard is cut out along ``partition_dim`` with the TP rank (the expert-TP rank for
  experts). Fused QKV splits into contiguous blocks of query groups; SwiGLU's fc1 is [gate; up] in
  full and [gate shard; up shard] on a rank.

The global tensor is what a 1-process model holds and what a checkpoint saves, so a TP=1 checkpoint
of the initial model is the same whatever layout drew it. Cost: every rank draws each full tensor of
its chunk once (time and transient memory ~ the largest tensor, e.g. the 128k x 3k embedding of the
3B decoder, 1.6 GB in fp32); drawing only the shard would need a counter-based RNG.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import parallel_state
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.mlp import MLP
    from megatron.core.transformer.moe.experts import SequentialMLP
    from megatron.core.transformer.moe.moe_layer import MoELayer
    from megatron.core.transformer.transformer_layer import TransformerLayer

OUTPUT_PROJECTIONS = ("linear_proj", "linear_fc2")  # megatron's output_layer_init_method layers


def param_seed(seed: int, global_name: str) -> int:
    """The generator seed of one parameter: 63 bits of sha256("<seed>/<global name>")."""
    digest = hashlib.sha256(f"{seed}/{global_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Slot:
    """Where a parameter sits: what decides its global name, its init and its shard."""

    global_name: str
    module: torch.nn.Module  # the module that holds it
    role: str  # the module's attribute name in its parent ("linear_fc1", "conv1", ...)
    parent: torch.nn.Module | None
    config: TransformerConfig  # the nearest TransformerConfig above it (the decoder's for the connector)
    expert: bool  # a routed expert's: sharded over expert-TP ranks


def slots(model: torch.nn.Module) -> dict[str, Slot]:
    """{local parameter name: Slot} for every parameter of ``model``.

    Global names: ``TransformerLayer.layer_number`` is global and 1-based (megatron adds the
    pipeline stage's offset); ``MoELayer.local_expert_indices`` holds each local expert's global index.
    """
    out: dict[str, Slot] = {}

    def visit(module, local, glob, role, parent, config, expert_ids, expert) -> None:
        own = getattr(module, "config", None)
        config = own if isinstance(own, TransformerConfig) else config
        if isinstance(module, MoELayer):
            expert_ids = module.local_expert_indices
        for pname, _ in module.named_parameters(recurse=False):
            out[local + pname] = Slot(glob + pname, module, role, parent, config, expert)
        for cname, child in module.named_children():
            gname = cname
            if isinstance(child, TransformerLayer) and isinstance(module, torch.nn.ModuleList):
                gname = str(child.layer_number - 1)
            child_expert = expert or isinstance(child, SequentialMLP)
            if isinstance(module, torch.nn.ModuleList) and isinstance(parent, SequentialMLP) and expert_ids:
                gname = str(expert_ids[int(cname)])  # parent: the SequentialMLP holding local_experts
            visit(child, f"{local}{cname}.", f"{glob}{gname}.", cname, module, config, expert_ids, child_expert)

    visit(model, "", "", "", None, getattr(model, "config", None), None, False)
    return out


def _full_tensor(shape: list[int], slot: Slot, leaf: str) -> torch.Tensor:
    """The full fp32 tensor, drawn from the (already seeded) default CPU generator."""
    full = torch.empty(shape, dtype=torch.float32)
    if leaf.endswith("bias"):
        return full.zero_()
    if "norm" in leaf or "norm" in type(slot.module).__name__.lower():  # incl. TE's fused layer_norm_weight
        return full.fill_(1.0)
    if slot.role in OUTPUT_PROJECTIONS:
        slot.config.output_layer_init_method(full)
    else:
        slot.config.init_method(full)
    return full


def shard(full: torch.Tensor, size: int, rank: int, dim: int, gated: bool = False) -> torch.Tensor:
    """TP rank ``rank`` of ``size``'s part of ``full`` along ``dim``, as megatron lays it out.

    Contiguous blocks: rows of a column-parallel weight (for the fused QKV weight, whole query
    groups), columns of a row-parallel one. ``gated`` (SwiGLU's fc1): the full tensor is
    [gate; up], a rank holds [gate block; up block].
    """
    if gated:
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(size, dim=dim)[rank], up.chunk(size, dim=dim)[rank]], dim=dim)
    return full.chunk(size, dim=dim)[rank]


def _tp(expert: bool) -> tuple[int, int]:
    """(size, rank) of the tensor-parallel group that shards this kind of parameter."""
    if expert:
        return parallel_state.get_expert_tensor_parallel_world_size(), parallel_state.get_expert_tensor_parallel_rank()
    return parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank()


@torch.no_grad()
def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Redraw every parameter of ``model`` (an MM1Model chunk, built for the current process groups)
    so that the global tensors depend only on ``seed`` and the config, not on the layout or on the
    RNG state at construction; see the module docstring. The global RNG states are left as they were.
    """
    where = slots(model)
    with torch.random.fork_rng(devices=[]):  # megatron's init methods draw from the default generator
        for name, param in model.named_parameters():
            slot = where[name]
            leaf = name.rsplit(".", 1)[-1]
            sharded = getattr(param, "tensor_model_parallel", False)
            size, rank = _tp(slot.expert) if sharded else (1, 0)
            dim = param.partition_dim if sharded else 0
            shape = list(param.shape)
            shape[dim] *= size
            torch.default_generator.manual_seed(param_seed(seed, slot.global_name))
            full = _full_tensor(shape, slot, leaf)
            gated = isinstance(slot.parent, MLP) and slot.parent.config.gated_linear_unit and slot.role == "linear_fc1"
            param.copy_(shard(full, size, rank, dim, gated))
