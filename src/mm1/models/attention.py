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
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import torch.nn.functional as F

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import tensor_parallel
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.spec_utils import ModuleSpec


class SdpaAttention(DotProductAttention):
    """megatron ``DotProductAttention`` computed by one fused ``scaled_dot_product_attention`` call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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
                context = F.scaled_dot_product_attention(q, k, v, **kwargs)
        else:
            context = F.scaled_dot_product_attention(q, k, v, **kwargs)
        # (b, heads, sq, hn) -> (sq, b, heads * hn)
        return context.permute(2, 0, 1, 3).reshape(sq, context.size(0), self.hidden_size_per_partition)


def with_sdpa(spec: Any) -> Any:
    """A copy of a megatron layer or block spec with every local ``DotProductAttention`` as :class:`SdpaAttention`.

    Transformer Engine's attention (a TE spec) is left as it is: it is fused already.
    """
    return _swap(copy.deepcopy(spec))


def _swap(node: Any) -> Any:
    """``node`` with local attention swapped, in place where it is mutable; a bare class is returned swapped."""
    if node is DotProductAttention:  # specs name the core attention as a bare class or as a ModuleSpec
        return SdpaAttention
    if isinstance(node, ModuleSpec):
        node.module = _swap(node.module)
        node.submodules = _swap(node.submodules)
    elif isinstance(node, list):
        node[:] = [_swap(item) for item in node]
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for field in dataclasses.fields(node):
            setattr(node, field.name, _swap(getattr(node, field.name)))
    elif isinstance(node, dict):
        for key, item in node.items():
            node[key] = _swap(item)
    return node
