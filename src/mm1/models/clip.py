"""CLIP pre-training of the image encoder (MM1 Table 1): the ViT, a small causal text tower, InfoNCE.

Both towers end in LayerNorm -> Linear into a shared ``embed_dim`` space; the image side pools the
patch features (mean, or the class token when there is one), the text side reads the feature at
each caption's last real token (its ``<eoc>``), which a causal tower computes from the whole caption
and nothing after it. The loss is the symmetric cross-entropy of the scaled cosine similarities.

The ViT is ``self.encoder``, unwrapped, so its checkpoint keys are ``encoder.*`` as in MM1Model.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from mm1.config import ClipHeadConfig, EncoderConfig
from mm1.models.attention import with_sdpa
from mm1.models.encoder import build_encoder, patch_features
from mm1.models.megatron_config import MegatronLayout, compile_layers, encoder_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.module import MegatronModule
    from megatron.core.transformer.transformer_block import TransformerBlock

MAX_LOGIT_SCALE = 100.0  # temperature >= 0.01, as in CLIP


class TextTower(MegatronModule):
    """Caption ids (B, T) and lengths (B,) -> the feature at each caption's last token (B, width).

    megatron's TransformerBlock with the local GPT layer spec (causal self-attention); its layers
    are the ViT's kind (LayerNorm, GELU or quick_gelu, biases) at the text tower's width, with a
    4x MLP as in CLIP.
    """

    def __init__(self, head: ClipHeadConfig, enc: EncoderConfig, vocab_size: int, layout: MegatronLayout) -> None:
        text = EncoderConfig(
            hidden_size=head.text_hidden_size,
            num_layers=head.text_layers,
            num_attention_heads=head.text_attention_heads,
            ffn_hidden_size=4 * head.text_hidden_size,
            activation=enc.activation,
            norm_epsilon=enc.norm_epsilon,
        )
        config = encoder_config(text, layout)
        super().__init__(config=config)
        self.seq_length = head.text_seq_length
        self.token_embedding = nn.Embedding(vocab_size, head.text_hidden_size)
        self.position_embedding = nn.Parameter(torch.empty(head.text_seq_length, head.text_hidden_size))
        nn.init.normal_(self.token_embedding.weight, std=config.init_method_std)
        nn.init.normal_(self.position_embedding, std=config.init_method_std)
        spec = with_sdpa(get_gpt_layer_local_spec(normalization="LayerNorm"), layout.attention_backend)  # causal
        self.block = TransformerBlock(config=config, spec=spec, pre_process=True, post_process=False)
        if layout.compile_layers:
            compile_layers(self.block)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        B, T = text.shape
        if T > self.seq_length:
            raise ValueError(f"captions of {T} tokens exceed clip.text_seq_length={self.seq_length}; cut them")
        if (lengths < 1).any() or (lengths > T).any():
            raise ValueError(f"caption lengths must lie in [1, {T}], got {lengths.tolist()}")
        x = self.token_embedding(text) + self.position_embedding[:T]  # (B, T, W)
        x = self.block(x.transpose(0, 1).contiguous(), attention_mask=None)  # (T, B, W), causal
        return x[lengths - 1, torch.arange(B, device=x.device)]  # (B, W)


class ClipModel(MegatronModule):
    """forward(images, text, text_lengths) -> the symmetric InfoNCE loss (scalar)."""

    def __init__(self, cfg: EncoderConfig, vocab_size: int, layout: MegatronLayout | None = None) -> None:
        layout = layout or MegatronLayout()
        super().__init__(config=encoder_config(cfg, layout))
        self.cfg = cfg
        head = cfg.clip
        self.encoder = build_encoder(cfg, layout)  # bidirectional, as it will be in MM1
        self.image_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_epsilon)
        self.image_proj = nn.Linear(cfg.hidden_size, head.embed_dim, bias=False)
        self.text = TextTower(head, cfg, vocab_size, layout)
        self.text_norm = nn.LayerNorm(head.text_hidden_size, eps=cfg.norm_epsilon)
        self.text_proj = nn.Linear(head.text_hidden_size, head.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / head.init_temperature)))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, embed_dim) unit-norm embeddings."""
        features = self.encoder(images)  # (B, class_token + P, hidden)
        pooled = features[:, 0] if self.cfg.class_token else patch_features(features, self.cfg).mean(dim=1)
        return F.normalize(self.image_proj(self.image_norm(pooled)), dim=-1)

    def embed_texts(self, text: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
        """(B, T) caption ids, right-padded, and their lengths (B,) -> (B, embed_dim) unit-norm embeddings."""
        return F.normalize(self.text_proj(self.text_norm(self.text(text, text_lengths))), dim=-1)

    def forward(self, images: torch.Tensor, text: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
        image = self.embed_images(images)  # (B, E)
        caption = self.embed_texts(text, text_lengths)  # (B, E)
        scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        logits = scale * image @ caption.T  # (B, B): image i vs caption j
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
