"""The MM1 model: ViT -> connector -> megatron GPT decoder, image tokens spliced into the text.

A sequence holds text token ids and, where an image goes, ``num_tokens`` copies of the
``<image>`` id. The first pipeline stage embeds the text, encodes the images, and replaces the
embeddings at the ``<image>`` positions with the connector's outputs, in order.

:func:`count_mismatches` builds the model on the meta device and holds the analytic counts of
:mod:`mm1.models.size` to it.
"""

from __future__ import annotations

import re
import warnings

import torch

from mm1.config import ModelConfig
from mm1.models import size
from mm1.models.connector import build_connector
from mm1.models.encoder import build_encoder, patch_features
from mm1.models.megatron_config import MegatronLayout, compile_layers, decoder_config, decoder_layer_spec
from mm1.models.size import ParamCount, padded_vocab_size

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import tensor_parallel
    from megatron.core.enums import ModelType
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.module import MegatronModule


def splice_images(text: torch.Tensor, image_tokens: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
    """Put the image tokens into the ``<image>`` slots of the batch, in order.

    text: (S, B, H) embeddings; image_tokens: (M, N, H), the M images of the batch in reading order
    (sequence by sequence, left to right), N tokens each; is_image: (B, S) with M*N slots in all.
    A sequence may hold any number of images, including none.
    """
    m, n, h = image_tokens.shape
    slots = int(is_image.sum())
    if slots != m * n:
        raise ValueError(
            f"the batch has {slots} <image> slots but {m} images x {n} tokens = {m * n}; "
            f"slots per sequence: {is_image.sum(dim=1).tolist()}"
        )
    flat = is_image.reshape(-1)  # (B*S,) in reading order
    index = (flat.cumsum(0) - 1).clamp(min=0)  # which image token goes to each position
    gathered = image_tokens.reshape(m * n, h)[index] if m else text.new_zeros(flat.numel(), h)
    gathered = gathered.reshape(*is_image.shape, h).transpose(0, 1)  # (S, B, H)
    spliced = torch.where(is_image.T.unsqueeze(-1), gathered, text)
    return spliced.contiguous()  # where() keeps the transposed layout; pipeline sends need contiguous


class MM1Model(MegatronModule):
    """forward(tokens, images, labels) -> per-token loss (B, S), or logits (B, S, V) without labels."""

    def __init__(
        self,
        cfg: ModelConfig,
        vocab_size: int,
        image_token_id: int,
        layout: MegatronLayout | None = None,
        pre_process: bool = True,
        post_process: bool = True,
    ) -> None:
        layout = layout or MegatronLayout()
        config = decoder_config(cfg.decoder, cfg.moe, layout)
        super().__init__(config=config)
        self.cfg = cfg
        self.model_type = ModelType.encoder_or_decoder
        self.share_embeddings_and_output_weights = False  # read by finalize_model_grads under PP
        self.image_token_id = image_token_id
        self.pre_process = pre_process
        self.post_process = post_process
        self.language_model = GPTModel(
            config=config,
            transformer_layer_spec=decoder_layer_spec(config, layout.attention_backend),
            vocab_size=padded_vocab_size(vocab_size),
            max_sequence_length=cfg.decoder.seq_length,
            pre_process=pre_process,
            post_process=post_process,
            position_embedding_type=cfg.decoder.position_embedding,
            share_embeddings_and_output_weights=False,
            rotary_base=cfg.decoder.rotary_base,
            scatter_embedding_sequence_parallel=False,  # embed() scatters after the images are spliced in
        )
        if layout.compile_layers:  # parallel.compile_layers (the ViT's are compiled by build_encoder)
            compile_layers(self.language_model.decoder)
        if pre_process:
            self.encoder = build_encoder(cfg.encoder, layout)
            self.connector = build_connector(
                cfg.connector, cfg.encoder.hidden_size, cfg.encoder.grid, cfg.decoder.hidden_size
            )

    def _no_images(self, images: torch.Tensor) -> torch.Tensor:
        """(0, N, H) image tokens for a batch without images (text-only sequences)."""
        h = self.cfg.decoder.hidden_size
        return images.new_zeros(0, self.cfg.connector.num_tokens, h)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) images -> (M, num_tokens, decoder hidden) image tokens."""
        return self.connector(patch_features(self.encoder(images), self.cfg.encoder))

    def embed(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(B, S) ids and the batch's (M, 3, H, W) images -> (S, B, H) decoder input, images spliced in."""
        position_ids = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
        text = self.language_model.embedding(input_ids=tokens, position_ids=position_ids)  # (S, B, H)
        image_tokens = self.encode_images(images) if len(images) else self._no_images(images)
        spliced = splice_images(text, image_tokens, tokens == self.image_token_id)
        if self.config.sequence_parallel:  # each TP rank keeps its 1/tp of the sequence from here on
            spliced = tensor_parallel.scatter_to_sequence_parallel_region(spliced)
        return spliced

    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def forward(
        self,
        tokens: torch.Tensor,  # (B, S) int64
        images: torch.Tensor | None,  # (M, 3, H, W) float: the batch's images in reading order
        labels: torch.Tensor | None = None,  # (B, S) next-token targets
        gather_logits: bool = False,
    ) -> torch.Tensor:
        """With ``gather_logits`` every TP rank gets the whole vocabulary (generation, scoring);
        otherwise logits stay split over TP ranks as the vocab-parallel loss wants them."""
        position_ids = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
        decoder_input = self.embed(tokens, images) if self.pre_process else None
        return self.language_model(
            input_ids=tokens,
            position_ids=position_ids,
            attention_mask=None,
            decoder_input=decoder_input,
            labels=labels,
            runtime_gather_output=True if gather_logits else None,
        )


# --- the parameter counts of an instantiated model -----------------------------------------------

COMPONENTS = {"encoder": "encoder", "connector": "connector", "decoder": "language_model"}
_IDLE_EXPERT = re.compile(r"\.experts\.local_experts\.(\d+)\.")


def instantiated_counts(cfg: ModelConfig, vocab_size: int) -> dict[str, ParamCount]:
    """``sum(p.numel())`` per component of MM1Model(cfg) built on the meta device.

    Meta tensors carry shapes but no storage, so even the 60B MoE builds in seconds. Active: the
    parameters of experts ``top_k`` and above of each MoE layer are left out (every expert has the
    same shape, so which top_k a token picks does not change the count). Call it inside
    :func:`mm1.parallel.setup.distributed` (megatron needs its process groups to build).
    """
    with torch.device("meta"):
        model = MM1Model(cfg, vocab_size=vocab_size, image_token_id=0)
    counts = {}
    for name, attr in COMPONENTS.items():
        total = active = 0
        for pname, p in getattr(model, attr).named_parameters():
            total += p.numel()
            match = _IDLE_EXPERT.search(pname)
            if not (match and int(match.group(1)) >= cfg.moe.top_k):
                active += p.numel()
        counts[name] = ParamCount(total, active)
    counts["total"] = counts["encoder"] + counts["connector"] + counts["decoder"]
    return counts


def count_mismatches(cfg: ModelConfig, vocab_size: int) -> list[str]:
    """Where :func:`mm1.models.size.count_model` and :func:`instantiated_counts` disagree ([] when they agree)."""
    analytic, built = size.count_model(cfg, vocab_size), instantiated_counts(cfg, vocab_size)
    return [
        f"{part}: analytic {analytic[part]} != instantiated {built[part]}"
        for part in analytic
        if analytic[part] != built[part]
    ]
