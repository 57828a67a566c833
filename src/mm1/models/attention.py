"""Core attention through ``torch.nn.functional.scaled_dot_product_attention`` for megatron's local spec.

megatron's local ``DotProductAttention`` computes scores with ``baddbmm``, masks and softmaxes them in
separate kernels and multiplies by V with ``bmm``; Transformer Engine replaces all of it with a fused
kernel, but TE needs CUDA and has no cp312 wheel for the GPU machine here. torch's SDPA is a fused
kernel on both (``_scaled_dot_product_flash_attention_for_cpu`` in the CPU profile; flash attention on CUDA). ``bench/train_throughput.py``
measured megatron's unfused attention at 34% of the gap to an HF model that uses SDPA.

:class:`SdpaAttention` is a drop-in subclass: same constructor, same state dict (no parameters), same
mask conventions. It covers what the project builds -- causal (decoder, CLIP text), no mask (ViT) and
arbitrary boolean masks (AIM's prefix-causal mask), grouped-query attention, dropout under
megatron's RNG tracker -- and hands everything else (softmax offsets, sliding windows, query-key
layer scaling, packed sequences, attention bias) to the parent unchanged.

Which SDPA kernel runs is torch's choice (``attention_backend="auto"``) unless parallel.attention_backend
names one: it goes first in torch's priority list, the others follow as fallbacks for shapes or masks it
cannot take (``torch.nn.attention.sdpa_kernel(..., set_priority=True)``). PyTorch 2.5 added cuDNN
attention as an SDPA backend for H100 and newer GPUs (its release notes); torch then moved it down its
default order after cuDNN refused some shapes at run time (pytorch/pytorch#138587), so ``auto`` may
not pick it; issue 25 cites it as 1.7-2.3x faster than flash for training shapes on Hopper.
bench/gpu_mfu.py --levers measures it. The MM1 paper is silent on kernels. On a CPU torch has only
its flash kernel and the math one: naming cudnn or efficient there is ignored with one warning.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import tensor_parallel
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.spec_utils import ModuleSpec


# parallel.attention_backend -> torch's SDPA kernels in priority order (None: torch's own order)
BACKENDS: dict[str, list[SDPBackend] | None] = {
    "auto": None,
    "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH],
    "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "math": [SDPBackend.MATH],
}
CUDA_ONLY = ("efficient", "cudnn")  # torch has no CPU kernel of these
_WARNED: set[str] = set()  # what warn_once has said in this process


def warn_once(message: str) -> None:
    """A UserWarning the first time ``message`` comes up in this process only (a lever ignored on
    this device says so in one line, not once per layer or step)."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


class SdpaAttention(DotProductAttention):
    """megatron ``DotProductAttention`` computed by one fused ``scaled_dot_product_attention`` call,
    with the SDPA kernel ``backend`` (a key of :data:`BACKENDS`) first in torch's priority order."""

    def __init__(self, *args: Any, backend: str = "auto", **kwargs: Any) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"parallel.attention_backend={backend!r} is not one of {sorted(BACKENDS)}")
        super().__init__(*args, **kwargs)
        self.backend = backend
        self._fused = (
            self.softmax_offset is None
            and self.scale_mask_softmax.window_size is None
            and not self.config.apply_query_key_layer_scaling
        )

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):  # fmt: skip
        """``query`` (sq, b, heads, hn), ``key``/``value`` (sk, b, groups, hn) -> (sq, b, heads * hn)."""
        sq, sk = query.size(0), key.size(0)
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        causal = mask_type == AttnMaskType.causal and attention_mask is None and sq > 1
        if not self._fused or attention_bias is not None or packed_seq_params is not None or (causal and sq != sk):
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias, packed_seq_params)
        if mask_type == AttnMaskType.no_mask:
            attention_mask = None  # megatron's softmax ignores a mask passed with no_mask too
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # (b, heads|groups, s, hn)
        p = self.attention_dropout.p if self.training else 0.0
        kwargs = dict(
            attn_mask=None if attention_mask is None else ~attention_mask,  # megatron: True = masked out
            dropout_p=p,
            is_causal=causal,
            scale=self.softmax_scale,
            enable_gqa=k.size(1) != q.size(1),
        )
        if p > 0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                context = self._sdpa(q, k, v, **kwargs)
        else:
            context = self._sdpa(q, k, v, **kwargs)
        # (b, heads, sq, hn) -> (sq, b, heads * hn)
        return context.permute(2, 0, 1, 3).reshape(sq, context.size(0), self.hidden_size_per_partition)

    def _sdpa(self, q, k, v, **kwargs) -> torch.Tensor:
        """SDPA under this layer's kernel choice; a CUDA-only choice on another device is torch's choice."""
        backends = BACKENDS[self.backend]
        if self.backend in CUDA_ONLY and not q.is_cuda:
            warn_once(
                f"parallel.attention_backend={self.backend} is ignored on {q.device.type}: "
                "torch has no such kernel there (it picks flash or math)"
            )
            backends = None
        if backends is None:
            return F.scaled_dot_product_attention(q, k, v, **kwargs)
        with sdpa_kernel(backends, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v, **kwargs)


def with_sdpa(spec: Any, backend: str = "auto") -> Any:
    """A copy of a megatron layer or block spec with every local ``DotProductAttention`` as :class:`SdpaAttention`
    asking for the SDPA kernel ``backend`` ("auto": the bare class, torch's choice).

    Transformer Engine's attention (a TE spec) is left as it is: it is fused already.
    """
    if backend not in BACKENDS:
        raise ValueError(f"parallel.attention_backend={backend!r} is not one of {sorted(BACKENDS)}")
    core = SdpaAttention if backend == "auto" else ModuleSpec(module=SdpaAttention, params={"backend": backend})
    return _swap(copy.deepcopy(spec), core, backend)


def _swap(node: Any, core: Any, backend: str) -> Any:
    """``node`` with local attention swapped for ``core``, in place where it is mutable; a bare class is
    returned swapped."""
    if node is DotProductAttention:  # specs name the core attention as a bare class or as a ModuleSpec
        return core
    if isinstance(node, ModuleSpec):
        if node.module is DotProductAttention:
            node.module = SdpaAttention
            node.params = {**node.params, **({} if backend == "auto" else {"backend": backend})}
        else:
            node.module = _swap(node.module, core, backend)
        node.submodules = _swap(node.submodules, core, backend)
    elif isinstance(node, list):
        node[:] = [_swap(item, core, backend) for item in node]
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for field in dataclasses.fields(node):
            setattr(node, field.name, _swap(getattr(node, field.name), core, backend))
    elif isinstance(node, dict):
        for key, item in node.items():
            node[key] = _swap(item, core, backend)
    return node
