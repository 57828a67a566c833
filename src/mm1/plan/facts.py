"""What the planner needs to know about one model, computed once per config and shared by every layout.

Parameter counts come from :mod:`mm1.models.size` (held equal to instantiated models by its
tests), FLOPs from :mod:`mm1.models.flops`; both are split here into the pieces that land on
different pipeline stages: the encoder, the connector and the input embedding sit on the first
stage, the final norm and output layer on the last, the decoder layers in between (layer i on
stage i // (num_layers / pp)). A decoder layer's parameters and FLOPs are taken as differences of
1- and 2-layer decoders, so they follow size.py and flops.py exactly.

The connector's activation memory is measured, not modelled: the configured connector runs once on
the meta device (shapes only, nothing is computed) in bf16, and the bytes autograd saves for its
backward (``saved_tensors_hooks``, parameters left out) are summed per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mm1.config import MoEConfig, RunConfig
from mm1.models.connector import build_connector
from mm1.models.flops import connector_flops, decoder_flops, encoder_flops, step_flops
from mm1.models.size import _mlp, count_model, decoder_params, moe_layer_indices, padded_vocab_size


@dataclass(frozen=True)
class Facts:
    """Sizes of one model, split by where they live. Parameters are counts, FLOPs are forward FLOPs."""

    # parameters
    encoder: int
    connector: int
    embedding: int  # input embedding (+ learned positions): first stage
    head: int  # final norm + output layer: last stage
    dense_layer: int  # a dense decoder layer
    moe_layer: int  # the non-expert part of an MoE layer (norms, attention, router)
    experts: int  # the experts of one MoE layer (num_experts MLPs)
    moe_ids: frozenset[int]  # which decoder layers are MoE
    layers: int
    total: int  # whole model (size.count_model)
    active: int
    # activation shapes: decoder (s, h, a), encoder (s_v, w, a_v) per image, images per sequence (max)
    seq: int
    hidden: int
    heads: int
    vocab: int  # padded
    top_k: int
    attention: float  # what a decoder layer's attention keeps per token, in units of h bytes (estimate.py)
    mlp: float  # the same for its MLP
    enc_attention: float  # the same for the ViT
    enc_mlp: float
    enc_tokens: int
    enc_hidden: int
    enc_heads: int
    enc_layers: int
    images: int  # most images in one sequence: the activation memory of the worst micro-batch
    images_flops: float  # images per sequence the time estimate assumes (default: the most)
    connector_bytes: float  # saved for backward, per image, bf16
    # forward FLOPs: per image (encoder, connector) and per sequence (decoder parts)
    enc_flops: float
    con_flops: float
    dense_layer_flops: float
    moe_layer_flops: float
    head_flops: float
    dec_attn_core_flops: float  # scores + A.V of one decoder layer: what selective recomputation redoes
    enc_attn_core_flops: float  # the same for one ViT layer, per image
    step: dict[str, float]  # flops.step_flops: the whole global batch, forward and total


def _connector_saved_bytes(cfg: RunConfig) -> float:
    enc = cfg.model.encoder
    with torch.device("meta"):
        connector = build_connector(cfg.model.connector, enc.hidden_size, enc.grid, cfg.model.decoder.hidden_size)
        connector = connector.to(torch.bfloat16)
        patches = torch.empty(1, enc.grid**2, enc.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    params = {id(p) for p in connector.parameters()}
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in params and (t._base is None or id(t._base) not in params):  # weights are not activations
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        connector(patches)
    return float(sum(saved))


# What a layer keeps for backward besides its norms, in units of h bytes per token (estimate.py):
# attention (the fused QKV output and the projection input; with RoPE also the rotated Q, K and a
# RoPE intermediate), and the MLP per unit of f/h: GeLU and megatron's fused quick-GELU keep the fc1
# output and the activation output, SwiGLU the doubled fc1 output and three f-wide tensors.
ATTENTION_KEPT = {"rope": 14, "none": 8}
MLP_KEPT = {"gelu": 4, "quick_gelu": 4, "swiglu": 10}


def facts(cfg: RunConfig, images_per_sequence: float | None = None) -> Facts:
    """The model's facts; ``images_per_sequence`` (default: data.mixture.max_images_per_sequence)
    sets the step FLOPs. Activation memory always assumes the maximum, the worst micro-batch."""
    m, vocab = cfg.model, cfg.tokenizer.vocab_size
    dec, enc, moe = m.decoder, m.encoder, m.moe
    images = cfg.data.mixture.max_images_per_sequence
    ips = images if images_per_sequence is None else images_per_sequence
    if isinstance(ips, bool) or not (isinstance(ips, int | float) and math.isfinite(ips) and ips >= 0):
        raise ValueError(f"--images-per-sequence {ips} is not a count: give a finite number >= 0 (e.g. {images})")

    def layers(n: int):
        return dec.model_copy(update={"num_layers": n})

    dense = MoEConfig()
    one, two = decoder_params(layers(1), dense, vocab).total, decoder_params(layers(2), dense, vocab).total
    dense_layer = two - one
    embedding = padded_vocab_size(vocab) * dec.hidden_size
    if dec.position_embedding == "learned_absolute":
        embedding += dec.seq_length * dec.hidden_size
    head = one - dense_layer - embedding
    experts = moe.num_experts * _mlp(dec)
    moe_layer = decoder_params(layers(1), moe, vocab).total - embedding - head - experts
    counts = count_model(m, vocab)

    head_flops = 2 * dec.seq_length * dec.hidden_size * padded_vocab_size(vocab)
    s_v = enc.grid**2 + int(enc.class_token)
    return Facts(
        encoder=counts["encoder"].total,
        connector=counts["connector"].total,
        embedding=embedding,
        head=head,
        dense_layer=dense_layer,
        moe_layer=moe_layer if moe.enabled else 0,
        experts=experts if moe.enabled else 0,
        moe_ids=frozenset(moe_layer_indices(dec.num_layers, moe)),
        layers=dec.num_layers,
        total=counts["total"].total,
        active=counts["total"].active,
        seq=dec.seq_length,
        hidden=dec.hidden_size,
        heads=dec.num_attention_heads,
        vocab=padded_vocab_size(vocab),
        top_k=moe.top_k if moe.enabled else 1,
        attention=ATTENTION_KEPT["rope" if dec.position_embedding == "rope" else "none"],
        mlp=MLP_KEPT[dec.activation] * dec.ffn_hidden_size / dec.hidden_size,
        enc_attention=ATTENTION_KEPT["none"],
        enc_mlp=MLP_KEPT[enc.activation] * enc.ffn_hidden_size / enc.hidden_size,
        enc_tokens=s_v,
        enc_hidden=enc.hidden_size,
        enc_heads=enc.num_attention_heads,
        enc_layers=enc.num_layers,
        images=images,
        images_flops=ips,
        connector_bytes=_connector_saved_bytes(cfg),
        enc_flops=encoder_flops(enc),
        con_flops=connector_flops(m),
        dense_layer_flops=decoder_flops(layers(1), dense, vocab) - head_flops,
        moe_layer_flops=decoder_flops(layers(1), moe, vocab) - head_flops,
        head_flops=head_flops,
        dec_attn_core_flops=4 * dec.seq_length**2 * dec.hidden_size,
        enc_attn_core_flops=4 * s_v**2 * enc.hidden_size,
        step=step_flops(cfg, ips),
    )
