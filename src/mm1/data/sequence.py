"""How an image and its caption become one training sequence, and how eval builds its prompt.

    <bos> <image> x N  [prompt]  caption  <eos>  <pad> ...
    |----- no loss ----------|  |-- loss ---|

labels[t] = tokens[t + 1]; the loss mask is on wherever the label is a caption token or <eos>.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mm1.data.tokenizer import TextTokenizer


@dataclass(frozen=True)
class Sequence:
    tokens: torch.Tensor  # (S,) int64
    labels: torch.Tensor  # (S,) int64
    loss_mask: torch.Tensor  # (S,) float32
    truncated: bool


def prompt_ids(tok: TextTokenizer, num_image_tokens: int, prompt: str = "") -> list[int]:
    """The part of the sequence the model is given: <bos>, the image slots, and the prompt text."""
    return [tok.bos_id] + [tok.image_id] * num_image_tokens + (tok.encode(prompt) if prompt else [])


def caption_sequence(
    tok: TextTokenizer, caption: str, num_image_tokens: int, seq_length: int, prompt: str = ""
) -> Sequence:
    head = prompt_ids(tok, num_image_tokens, prompt)
    body = tok.encode(caption.strip()) + [tok.eos_id]
    ids = head + body
    truncated = len(ids) > seq_length + 1
    ids = ids[: seq_length + 1]
    target_from = len(head)  # index in ids of the first caption token
    pad = seq_length + 1 - len(ids)
    full = torch.tensor(ids + [tok.pad_id] * pad, dtype=torch.long)
    mask = torch.zeros(seq_length + 1)
    mask[target_from : len(ids)] = 1.0
    return Sequence(tokens=full[:-1], labels=full[1:], loss_mask=mask[1:], truncated=truncated)
