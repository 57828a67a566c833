"""Matmul FLOPs of one MM1 training step (one global batch), by formula.

Convention: a matmul of (m x k) by (k x n) costs 2·m·n·k FLOPs; only matmuls and convolutions
count (norms, softmax, activations, pooling, RoPE and the loss are left out, as in
megatron's and PaLM's MFU accounting). Backward costs twice the forward (the gradients with respect
to inputs and to weights), so a training step is 3 x forward.

Per image, encoder (ViT, s = grid^2 + class token positions, width w, MLP width f, patch p):
    patch conv   2 · grid^2 · (3·p^2) · w
    per layer    2·s·(3w^2 + w^2 + 2·w·f)       QKV, projection, fc1 + fc2
               + 2 · 2·s^2·w                    scores QK^T and A·V
Per image, connector: counted by torch's FlopCounterMode on a meta-device instance of the
configured connector (its convolutions and linears; exact for every kind, nothing is computed).
Per sequence, decoder (S tokens, width h, head dim d, g key/value groups, MLP width f, m = 3
matrices for SwiGLU else 2, vocabulary V padded as instantiated):
    per layer    2·S·h·(h + 2·g·d) + 2·S·h^2    QKV (grouped-query) + projection
               + 2 · 2·S^2·h                    scores and A·V over the full S x S square
               + 2·S·m·h·f                      MLP (dense layer)
            or + 2·S·h·E + top_k · 2·S·m·h·f    router + the top_k experts each token visits (MoE layer)
    LM head      2·S·h·V
Causal attention is counted over the full square, as megatron's local attention computes it
(it masks a full score matrix) and as PaLM's MFU formula counts it; a causal kernel (flash
attention) skips about half of the attention term. Image tokens take decoder positions, so the
decoder's cost does not depend on the number of images; the encoder's and connector's do.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from mm1.config import DecoderConfig, EncoderConfig, ModelConfig, MoEConfig, RunConfig
from mm1.models.connector import build_connector
from mm1.models.size import moe_layer_indices, padded_vocab_size


def encoder_flops(enc: EncoderConfig) -> int:
    """Forward FLOPs of the ViT for one image."""
    w, f, s = enc.hidden_size, enc.ffn_hidden_size, enc.grid**2 + int(enc.class_token)
    conv = 2 * enc.grid**2 * (3 * enc.patch_size**2) * w
    layer = 2 * s * (4 * w * w + 2 * w * f) + 4 * s * s * w
    return conv + enc.num_layers * layer


def connector_flops(cfg: ModelConfig) -> int:
    """Forward FLOPs of the connector for one image, counted on a meta-device instance."""
    enc = cfg.encoder
    with torch.device("meta"):
        connector = build_connector(cfg.connector, enc.hidden_size, enc.grid, cfg.decoder.hidden_size)
        patches = torch.empty(1, enc.grid**2, enc.hidden_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        connector(patches)
    return counter.get_total_flops()


def decoder_flops(dec: DecoderConfig, moe: MoEConfig, vocab_size: int) -> int:
    """Forward FLOPs of the decoder for one sequence of seq_length tokens, LM head included."""
    s, h = dec.seq_length, dec.hidden_size
    head_dim = h // dec.num_attention_heads
    mlp = 2 * s * (3 if dec.activation == "swiglu" else 2) * h * dec.ffn_hidden_size
    attention = 2 * s * h * (h + 2 * dec.query_groups * head_dim) + 2 * s * h * h + 4 * s * s * h
    n_moe = len(moe_layer_indices(dec.num_layers, moe))
    dense = (dec.num_layers - n_moe) * (attention + mlp)
    sparse = n_moe * (attention + 2 * s * h * moe.num_experts + moe.top_k * mlp)
    return dense + sparse + 2 * s * h * padded_vocab_size(vocab_size)


def step_flops(cfg: RunConfig, images_per_sequence: float, vocab_size: int | None = None) -> dict[str, float]:
    """FLOPs of one optimizer step: ``train.global_batch_size`` sequences of ``seq_length`` tokens
    holding ``images_per_sequence`` images each on average (data-dependent; MM1: at most 16).

    Returns the forward FLOPs of the encoder, connector and decoder over the batch, their sum
    ("forward") and forward + backward = 3 x forward ("total").
    """
    vocab = cfg.tokenizer.vocab_size if vocab_size is None else vocab_size
    sequences = cfg.train.global_batch_size
    images = sequences * images_per_sequence
    m = cfg.model
    out = {
        "encoder": images * encoder_flops(m.encoder),
        "connector": images * connector_flops(m),
        "decoder": float(sequences * decoder_flops(m.decoder, m.moe, vocab)),
    }
    out["forward"] = out["encoder"] + out["connector"] + out["decoder"]
    out["total"] = 3 * out["forward"]
    return out
