"""What every evaluation task of one checkpoint shares: the config, the model and the tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mm1.config import EvalConfig, ModelConfig, SFTConfig
from mm1.data.tokenizer import TextTokenizer
from mm1.models.mm1_model import MM1Model


@dataclass
class EvalContext:
    """The loaded checkpoint and its settings, passed to every task of :func:`mm1.eval.harness.evaluate`."""

    cfg: EvalConfig
    sft: SFTConfig | None  # the chat template of an SFT checkpoint; None for a pre-trained one
    model: MM1Model
    mc: ModelConfig
    tok: TextTokenizer
    device: torch.device

    @property
    def image_size(self) -> int:
        return self.mc.encoder.image_size

    @property
    def max_length(self) -> int:
        return self.mc.decoder.seq_length
