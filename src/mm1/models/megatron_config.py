"""Translate mm1 config sections into megatron-core TransformerConfigs.

The parallel sizes arrive as a plain ``MegatronLayout`` so that model code never reads process groups;
on CPU :func:`required_flags` turns off what megatron can only do on CUDA (the patches that make
megatron run on CPU at all are :mod:`mm1.parallel.compat`'s).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mm1.config import DecoderConfig, EncoderConfig, MoEConfig, ParallelConfig
from mm1.models.attention import warn_once, with_sdpa

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.activations import quick_gelu
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
    from megatron.core.transformer import ModuleSpec, TransformerConfig
    from megatron.core.transformer.torch_norm import WrappedTorchNorm


@dataclass(frozen=True)
class MegatronLayout:
    """Parallel sizes a model is built for (tensor, pipeline, expert), and its number format."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    bf16: bool = False  # bf16 weights and activations (train.precision); fp32 main weights live in the optimizer
    recompute: str = "none"  # parallel.recompute: none, selective or full activation recomputation
    sequence_parallel: bool = False  # parallel.sequence_parallel: the decoder's norms and residuals split over TP
    fusions: bool = False  # parallel.fusions: megatron's fused kernels that run without Transformer Engine (CUDA only)
    attention_backend: str = "auto"  # parallel.attention_backend: the SDPA kernel the core attention asks for
    compile_layers: bool = False  # parallel.compile_layers: torch.compile each transformer layer

    def __post_init__(self) -> None:
        if self.recompute not in RECOMPUTE:
            raise ValueError(
                f"parallel.recompute={self.recompute!r} cannot build a model: 'auto' is resolved to none, selective "
                "or full by mm1.plan.estimate.resolve_recompute(cfg, memory_gb) first; pass the resolved config"
            )

    @classmethod
    def of(cls, par: ParallelConfig, bf16: bool = False) -> MegatronLayout:
        """The layout ``par`` (a ParallelConfig, recompute resolved) states, in bf16 or fp32."""
        return cls(
            tp=par.tp, pp=par.pp, ep=par.ep, bf16=bf16, recompute=par.recompute,
            sequence_parallel=par.sequence_parallel, **levers(par),
        )  # fmt: skip


def levers(par: ParallelConfig) -> dict[str, Any]:
    """The speed levers of a ParallelConfig, as MegatronLayout fields (for layouts built field by field)."""
    return {"fusions": par.fusions, "attention_backend": par.attention_backend, "compile_layers": par.compile_layers}


# parallel.recompute -> megatron's recomputation fields. selective: the attention core only
# (recompute_modules defaults to ["core_attn"]); full: every layer keeps only its input and is
# recomputed whole in backward, one layer per checkpointed unit.
RECOMPUTE = {
    "none": {},
    "selective": {"recompute_granularity": "selective"},
    "full": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
}


# TransformerConfig fields that must hold on CPU: gloo has no batched isend/irecv, and the fused
# kernels (persistent LayerNorm, gradient-accumulation fusion, bias/softmax/dropout/RoPE fusions)
# exist only on CUDA. CPU initialisation is set on every device (_common).
CPU_FLAGS = {
    "use_cpu_initialization": True,
    "batch_p2p_comm": False,
    "batch_p2p_sync": False,
    "persist_layer_norm": False,
    "gradient_accumulation_fusion": False,
    "bias_activation_fusion": False,
    "masked_softmax_fusion": False,
    "bias_dropout_fusion": False,
    "apply_rope_fusion": False,
}


# parallel.fusions on CUDA: the fusions megatron-core 0.16.1 runs without Transformer Engine or apex.
# bias_dropout_fusion: bias + dropout + residual add in one jit_fuser (torch.compile) function
# (transformer_layer.get_bias_dropout_add). cross_entropy_loss_fusion with the "native" impl: megatron's
# fused_vocab_parallel_cross_entropy (fusions/fused_cross_entropy.py), jit-fused, no TE. Each entry's
# value: the module it needs importable (None: nothing beyond megatron). Not here: persist_layer_norm
# and memory_efficient_layer_norm (apex's norms; the local spec uses torch's); bias_activation_fusion
# is per MLP (activation_fusion).
FUSIONS: dict[str, tuple[dict[str, Any], str | None]] = {
    "bias_dropout_fusion": ({"bias_dropout_fusion": True}, None),
    "cross_entropy_loss_fusion": ({"cross_entropy_loss_fusion": True, "cross_entropy_fusion_impl": "native"}, None),
    # megatron's compiled softmax kernels (apex / megatron's legacy fused_kernels); SDPA makes it a
    # fallback-path fusion (sliding windows, softmax offsets) either way
    "masked_softmax_fusion": ({"masked_softmax_fusion": True}, "scaled_masked_softmax_cuda"),
    # the fused weight-gradient GEMM of apex (or TE)
    "gradient_accumulation_fusion": ({"gradient_accumulation_fusion": True}, "fused_weight_gradient_mlp_cuda"),
    "apply_rope_fusion": ({"apply_rope_fusion": True}, "transformer_engine"),  # TE >= 1.4 (megatron's check)
}


def activation_fusion(activation: str, gated: bool, bias: bool) -> dict[str, Any]:
    """bias_activation_fusion where megatron's MLP has a fused kernel for it: SwiGLU (bias or not,
    fused_bias_swiglu) and GeLU with biases (fused_bias_gelu); quick_gelu only as a gated unit
    (TransformerConfig.__post_init__ refuses it otherwise), so the CLIP ViT keeps it off."""
    ok = (activation == "swiglu" and gated) or (activation == "gelu" and (gated or bias))
    return {"bias_activation_fusion": True} if ok else {}


def fusion_flags(layout: MegatronLayout, activation: str, gated: bool, bias: bool) -> dict[str, Any]:
    """The fusion fields ``layout.fusions`` turns on for one model part; none without CUDA (one warning line)."""
    if not layout.fusions:
        return {}
    if not torch.cuda.is_available():
        warn_once("parallel.fusions=true is ignored without CUDA: megatron's fused kernels are CUDA only")
        return {}
    flags = activation_fusion(activation, gated, bias)
    for fields, module in FUSIONS.values():
        if module is None or importlib.util.find_spec(module) is not None:
            flags.update(fields)
    return flags


def required_flags() -> dict[str, Any]:
    """The TransformerConfig fields that must hold where no CUDA device is usable; none on a GPU."""
    return {} if torch.cuda.is_available() else dict(CPU_FLAGS)


def use_transformer_engine() -> bool:
    """The one place that picks the layer implementation: Transformer Engine on CUDA when it is
    installed, megatron's local (pure PyTorch) modules otherwise (always on CPU)."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def _common(layout: MegatronLayout) -> dict:
    return {
        "tensor_model_parallel_size": layout.tp,
        "params_dtype": torch.bfloat16 if layout.bf16 else torch.float32,
        "bf16": layout.bf16,
        "init_method_std": 0.02,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        # Full weights are drawn on the CPU and each rank keeps its shard, so the initial model
        # does not depend on the TP size; the trainer moves it to the GPU afterwards.
        "use_cpu_initialization": True,
        **RECOMPUTE[layout.recompute],
        **required_flags(),
    }


def _quiet_config(**kwargs) -> TransformerConfig:
    with warnings.catch_warnings():  # deprecation notes about CUDA-graph defaults we do not use
        warnings.simplefilter("ignore")
        return TransformerConfig(**kwargs)


def decoder_config(dec: DecoderConfig, moe: MoEConfig, layout: MegatronLayout) -> TransformerConfig:
    """The GPT decoder's TransformerConfig (LLaMA-style by default: RMSNorm, SwiGLU, no biases)."""
    swiglu = dec.activation == "swiglu"
    kwargs = {
        **_common(layout),
        "num_layers": dec.num_layers,
        "hidden_size": dec.hidden_size,
        "num_attention_heads": dec.num_attention_heads,
        "num_query_groups": dec.query_groups,
        "ffn_hidden_size": dec.ffn_hidden_size,
        "normalization": dec.normalization,
        "layernorm_epsilon": dec.norm_epsilon,
        "gated_linear_unit": swiglu,
        "activation_func": F.silu if swiglu else F.gelu,
        "add_bias_linear": False,
        "pipeline_model_parallel_size": layout.pp,
        "pipeline_dtype": torch.bfloat16 if layout.bf16 else torch.float32,
        "expert_model_parallel_size": layout.ep,
        # the ViT never: its input is not split over the sequence (MM1Model.embed scatters the decoder's)
        "sequence_parallel": layout.sequence_parallel,
        **fusion_flags(layout, dec.activation, swiglu, bias=False),
    }
    if moe.enabled:
        kwargs.update(
            num_moe_experts=moe.num_experts,
            moe_layer_freq=moe.layer_freq,
            moe_router_topk=moe.top_k,
            # top-2: softmax over the chosen logits (weights sum to 1, so upcycled = dense);
            # top-1 needs the softmax over all experts first, or every weight would be 1
            moe_router_pre_softmax=moe.top_k == 1,
            moe_aux_loss_coeff=moe.aux_loss_coeff,
            # None, not 0.0: megatron's router skips the z-loss only for None (0.0 logs 0/0 = NaN)
            moe_z_loss_coeff=moe.z_loss_coeff or None,
            moe_router_load_balancing_type="aux_loss",
            moe_token_dispatcher_type="alltoall",
            moe_grouped_gemm=False,
        )
    return _quiet_config(**kwargs)


def encoder_config(enc: EncoderConfig, layout: MegatronLayout) -> TransformerConfig:
    """The ViT's TransformerConfig: LayerNorm, GELU, biases; never pipelined (it lives on stage 0)."""
    return _quiet_config(
        **_common(layout),
        num_layers=enc.num_layers,
        hidden_size=enc.hidden_size,
        num_attention_heads=enc.num_attention_heads,
        ffn_hidden_size=enc.ffn_hidden_size,
        normalization="LayerNorm",
        layernorm_epsilon=enc.norm_epsilon,
        activation_func=quick_gelu if enc.activation == "quick_gelu" else F.gelu,
        add_bias_linear=True,
        pipeline_model_parallel_size=1,
        **fusion_flags(layout, enc.activation, gated=False, bias=True),
    )


def decoder_layer_spec(config: TransformerConfig, attention_backend: str = "auto"):
    """The decoder's block spec (dense or MoE per layer), TE or local per :func:`use_transformer_engine`,
    SDPA core attention asking for ``attention_backend`` (parallel.attention_backend); under sequence
    parallelism the local spec's norms are :class:`SequenceParallelNorm`."""
    spec = get_gpt_decoder_block_spec(config, use_transformer_engine=use_transformer_engine())
    spec = with_sdpa(spec, attention_backend)
    return _swap_norms(spec) if config.sequence_parallel else spec


def compile_layers(block: torch.nn.Module) -> None:
    """``torch.compile`` each layer of a megatron ``TransformerBlock`` in place (parallel.compile_layers).

    ``nn.Module.compile`` keeps the module and its state-dict keys, so checkpoints, DDP buckets and
    recomputation (which calls the layer) see the same model; one graph per layer class is traced
    and reused by the block's identical layers. The MM1 paper is silent on it; megatron-core 0.16.1
    has no such option (its ``jit_fuser`` compiles only the small fused functions). megatron 0.16.1's
    RowParallelLinear passes ``tp_group=None`` and so calls ``warnings.warn`` (a deprecation note) in
    every forward; dynamo breaks the graph at each call (measured on CPU: 16 graph breaks in a 4-layer
    model, 2 graphs without), so ``warnings.warn`` is a no-op inside compiled code (dynamo's
    ignore_logging_functions, for the whole process): a warning raised in a compiled layer is not shown.
    """
    torch._dynamo.config.ignore_logging_functions.add(warnings.warn)
    for layer in block.layers:
        layer.compile()


class SequenceParallelNorm:
    """megatron's local norm (torch LayerNorm / RMSNorm) under sequence parallelism.

    megatron 0.16's ``WrappedTorchNorm`` refuses ``sequence_parallel`` ("sequence parallel not
    supported by torch LayerNorm"), though a norm works per token: what sequence parallelism needs
    is that its weights, replicated over the TP ranks but each seeing 1/tp of the tokens, have their
    gradients summed over TP. megatron's ``finalize_model_grads`` does that for every parameter
    marked ``sequence_parallel``, as its own fused norms are.
    """

    def __new__(cls, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **kwargs: Any):
        plain = copy.copy(config)
        plain.sequence_parallel = False
        norm = WrappedTorchNorm(plain, hidden_size, eps, **kwargs)
        for param in norm.parameters():
            param.sequence_parallel = True
        return norm


def _swap_norms(node: Any) -> Any:
    """``node`` with every ``WrappedTorchNorm`` as :class:`SequenceParallelNorm` (in place where mutable)."""
    if node is WrappedTorchNorm:
        return SequenceParallelNorm
    if isinstance(node, ModuleSpec):
        node.module = _swap_norms(node.module)
        node.submodules = _swap_norms(node.submodules)
    elif isinstance(node, list):
        node[:] = [_swap_norms(item) for item in node]
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for field in dataclasses.fields(node):
            setattr(node, field.name, _swap_norms(getattr(node, field.name)))
    elif isinstance(node, dict):
        for key, item in node.items():
            node[key] = _swap_norms(item)
    return node
