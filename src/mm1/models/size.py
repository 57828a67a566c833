"""Analytic parameter counts of the MM1 model and MM1's learning-rate law (no torch: a leaf module).

The counts follow the modules megatron-core 0.16.1 actually builds (local specs, as on CPU), so
they equal ``sum(p.numel())`` of an instantiated :class:`~mm1.models.mm1_model.MM1Model`
(:func:`mm1.models.mm1_model.count_mismatches`); ``mm1 presets --check`` and
``tests/models/test_size.py`` hold them to that. This module imports only :mod:`mm1.config` and
the standard library: the workflow and the figures count parameters without importing torch.

The learning-rate law (MM1 section 3.5, Fig 6) takes N = the decoder's parameter count, embedding
and output layer included, with the vocabulary padded as instantiated. For an MoE decoder N is the
*active* count (router + top_k experts per MoE layer): the law was fitted on dense models, whose N
also measures the compute spent on each token; an MoE token passes through the active
parameters only, and the MoE experts are upcycled from the dense FFN the LR was chosen for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mm1.config import (
    ConnectorConfig,
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
    MoEConfig,
    RunConfig,
    TrainConfig,
)

# MM1 (s): peak LR = exp(LR_SLOPE * ln N + LR_INTERCEPT); weight decay lambda = WD_RATIO * peak LR,
# decoupled as in AXLearn (Loshchilov & Hutter Alg. 2): each step shrinks a weight by lambda * s(t),
# s(t) = lr(t) / peak LR. Torch's AdamW shrinks by weight_decay * lr(t), so lambda is
# weight_decay = lambda / peak LR = WD_RATIO there (docs/models.md, "Weight decay").
LR_SLOPE = -0.4214
LR_INTERCEPT = -0.5535
WD_RATIO = 0.1
# (s) The decoder sizes MM1 swept the LR on to fit the law (Fig 6): 9M, 85M, 302M, 1.2B.
LR_FIT_SIZES = (9e6, 85e6, 302e6, 1.2e9)


def padded_vocab_size(vocab_size: int, multiple: int = 128) -> int:
    """Pad the vocabulary so it splits evenly over TP ranks (independent of the TP size)."""
    return -(-vocab_size // multiple) * multiple


@dataclass(frozen=True)
class ParamCount:
    """Parameters stored (total) and parameters one token passes through (active; < total for MoE)."""

    total: int
    active: int

    def __add__(self, other: ParamCount) -> ParamCount:
        return ParamCount(self.total + other.total, self.active + other.active)

    def __mul__(self, times: int) -> ParamCount:
        return ParamCount(self.total * times, self.active * times)

    @classmethod
    def dense(cls, n: int) -> ParamCount:
        return cls(n, n)


# --- encoder: megatron CLIPViTModel (model_subtype "clip") + local ViT layer spec ----------------


def encoder_params(enc: EncoderConfig) -> ParamCount:
    """conv1 (no bias) + class token + position embeddings + ln_pre + layers.

    CLIPViTModel("clip") has ln_pre but no ln_post, and its TransformerBlock is built with
    post_process=False: no final norm. Each layer: LayerNorm, QKV and proj with biases, LayerNorm,
    fc1/fc2 with biases.
    """
    w, f = enc.hidden_size, enc.ffn_hidden_size
    tokens = enc.grid**2 + int(enc.class_token)
    embed = 3 * enc.patch_size**2 * w + int(enc.class_token) * w + tokens * w + 2 * w
    layer = 2 * (2 * w) + (3 * w * w + 3 * w) + (w * w + w) + (w * f + f) + (f * w + w)
    return ParamCount.dense(embed + enc.num_layers * layer)


# --- decoder: megatron GPTModel, local layer specs, untied embeddings ---------------------------


def _norm(dec: DecoderConfig) -> int:
    return dec.hidden_size * (2 if dec.normalization == "LayerNorm" else 1)  # LayerNorm has a bias


def _mlp(dec: DecoderConfig) -> int:
    """fc1 (doubled for SwiGLU's gate) + fc2, no biases (add_bias_linear=False)."""
    h, f = dec.hidden_size, dec.ffn_hidden_size
    return h * f * (2 if dec.activation == "swiglu" else 1) + f * h


def _attention(dec: DecoderConfig) -> int:
    """Fused QKV with grouped-query attention (kv heads = query_groups) + output projection."""
    h = dec.hidden_size
    head_dim = h // dec.num_attention_heads
    return h * (h + 2 * dec.query_groups * head_dim) + h * h


def moe_layer_indices(num_layers: int, moe: MoEConfig) -> list[int]:
    """Indices of the MoE layers: megatron's int moe_layer_freq=k makes layer i MoE when i % k == 0
    (layers 0, k, 2k, ...: ceil(num_layers / k) of them)."""
    if not moe.enabled:
        return []
    return [i for i in range(num_layers) if i % moe.layer_freq == 0]


def decoder_params(dec: DecoderConfig, moe: MoEConfig, vocab_size: int) -> ParamCount:
    """Word (+ learned position) embedding, layers, final norm, untied output layer."""
    h, v = dec.hidden_size, padded_vocab_size(vocab_size)
    embed = v * h + (dec.seq_length * h if dec.position_embedding == "learned_absolute" else 0)
    shared = ParamCount.dense(2 * _norm(dec) + _attention(dec))  # input norm, attention, pre-MLP norm
    dense_layer = shared + ParamCount.dense(_mlp(dec))
    router = moe.num_experts * h  # no bias: add_bias_linear=False
    moe_layer = shared + ParamCount(router + moe.num_experts * _mlp(dec), router + moe.top_k * _mlp(dec))
    n_moe = len(moe_layer_indices(dec.num_layers, moe))
    layers = dense_layer * (dec.num_layers - n_moe) + moe_layer * n_moe
    return ParamCount.dense(embed + _norm(dec) + v * h) + layers


# --- connector: the three kinds of mm1.models.connector -----------------------------------------


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def se_width(in_channels: int) -> int:
    """Squeeze-excite bottleneck of a RegBlock: a quarter of its input channels (timm's se_ratio=0.25)."""
    return max(1, round(in_channels / 4))


def _reg_block(c_in: int, c: int) -> int:
    """One RegBlock(c_in -> c); every ChannelNorm holds 2c."""
    rd = se_width(c_in)
    params = c_in * c + 2 * c  # 1x1 conv + norm
    params += 9 * c + 2 * c  # 3x3 depthwise conv + norm
    params += _linear(c, rd) + _linear(rd, c)  # squeeze-excite
    params += c * c + 2 * c  # 1x1 conv + norm
    if c_in != c:
        params += c_in * c + 2 * c  # shortcut: 1x1 conv + norm
    return params


def _avg_pool(cfg: ConnectorConfig, hv: int, h: int) -> int:
    """The projection: Hv * H + H."""
    return _linear(hv, h)


def _attn_pool(cfg: ConnectorConfig, hv: int, h: int) -> int:
    """Queries N*Hv, two LayerNorms 2*2Hv, q/kv/out projections 4*(Hv^2 + Hv), the projection Hv*H + H."""
    return cfg.num_tokens * hv + 2 * 2 * hv + 4 * _linear(hv, hv) + _linear(hv, h)


def _c_abstractor(cfg: ConnectorConfig, hv: int, h: int) -> int:
    """2 * depth RegBlocks of width W = Hv + the readout W*H + H + H*H + H."""
    blocks = 2 * cfg.depth * _reg_block(hv, hv)
    return blocks + _linear(hv, h) + _linear(h, h)


CONNECTOR_PARAMS = {"avg_pool": _avg_pool, "attn_pool": _attn_pool, "c_abstractor": _c_abstractor}


def connector_params(cfg: ConnectorConfig, encoder_width: int, grid: int, decoder_width: int) -> int:
    """Parameters of the connector ``cfg.kind`` names (the pooled grid size does not change them)."""
    return CONNECTOR_PARAMS[cfg.kind](cfg, encoder_width, decoder_width)


# --- the whole model -----------------------------------------------------------------------------


def count_model(cfg: ModelConfig, vocab_size: int) -> dict[str, ParamCount]:
    """{"encoder", "connector", "decoder", "total"} parameter counts of MM1Model(cfg, vocab_size).

    The encoder's pre-training heads (CLIP text tower, AIM pixel head) are not part of MM1Model
    and are not counted.
    """
    enc = encoder_params(cfg.encoder)
    con = ParamCount.dense(
        connector_params(cfg.connector, cfg.encoder.hidden_size, cfg.encoder.grid, cfg.decoder.hidden_size)
    )
    dec = decoder_params(cfg.decoder, cfg.moe, vocab_size)
    return {"encoder": enc, "connector": con, "decoder": dec, "total": enc + con + dec}


# --- the learning-rate law -----------------------------------------------------------------------


def peak_lr(n: float) -> float:
    """MM1's fitted peak learning rate for a decoder of n parameters: exp(-0.4214 ln n - 0.5535)."""
    if n <= 0:
        raise ValueError(f"the LR law needs a positive parameter count, got {n}")
    return math.exp(LR_SLOPE * math.log(n) + LR_INTERCEPT)


def law_weight_decay(n: float) -> float:
    """MM1's weight decay in the paper's (decoupled) convention: lambda = 0.1 x peak LR.

    Each step shrinks a weight by lambda x s(t), s(t) the LR schedule relative to its peak. This
    is the number the paper quotes, not torch's coefficient (see :func:`torch_weight_decay`).
    """
    return WD_RATIO * peak_lr(n)


def torch_weight_decay(train: TrainConfig) -> float:
    """The coefficient for torch/megatron AdamW, which shrinks a weight by weight_decay x lr(t) each step.

    ``train.weight_decay`` when set (it has torch's meaning); otherwise MM1's lambda = 0.1 x peak LR
    expressed in torch terms: lambda / peak LR = 0.1, whatever the peak LR (law or ``train.lr``).
    """
    return train.weight_decay if train.weight_decay is not None else WD_RATIO


def optimizer_hparams(cfg: RunConfig, vocab_size: int | None = None) -> tuple[float, float]:
    """(peak lr, torch weight decay): train.lr / train.weight_decay when set, MM1's law otherwise.

    N is the decoder's active parameter count for ``vocab_size`` (default: tokenizer.vocab_size;
    the trainer passes the trained tokenizer's size, so N matches the model as instantiated).
    The weight decay is :func:`torch_weight_decay`: a None weight decay gives a per-step shrink of
    0.1 x the peak LR in use x the schedule, as MM1 (AXLearn's decoupled AdamW).
    """
    vocab = cfg.tokenizer.vocab_size if vocab_size is None else vocab_size
    lr = cfg.train.lr
    if lr is None:
        lr = peak_lr(decoder_params(cfg.model.decoder, cfg.model.moe, vocab).active)
    return lr, torch_weight_decay(cfg.train)
