"""Multiple choice by likelihood: the choice whose tokens the model finds most probable wins.

For a context c and a choice x_1..x_m the score is sum_i log p(x_i | c, x_<i) (lm-eval-harness's
"acc"; no length normalisation). Context and choice are encoded separately ("The answer is" +
" 69"), so each choice's tokens are the same whatever the context ends with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mm1.data.tokenizer import TextTokenizer


@dataclass(frozen=True)
class Candidate:
    context: list[int]
    continuation: list[int]
    images: list[bytes]


@torch.no_grad()
def continuation_logprobs(
    model: torch.nn.Module,
    tok: TextTokenizer,
    candidates: Sequence[Candidate],
    images: torch.Tensor,  # (M, 3, H, W): the candidates' images in order
    max_length: int,
) -> list[float]:
    """Summed log-probability of each candidate's continuation after its context."""
    lengths = [len(c.context) + len(c.continuation) for c in candidates]
    if max(lengths) > max_length:
        raise ValueError(f"a context + choice of {max(lengths)} tokens exceeds the model's {max_length}-token context")
    if any(not c.continuation for c in candidates):
        raise ValueError("every choice needs at least one token")
    tokens = torch.full((len(candidates), max(lengths)), tok.pad_id, dtype=torch.long, device=images.device)
    for i, c in enumerate(candidates):
        tokens[i, : lengths[i]] = torch.tensor(c.context + c.continuation)
    logits = model(tokens, images, gather_logits=True)[..., : tok.vocab_size].float()  # (B, S, V)
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for i, c in enumerate(candidates):
        start = len(c.context)
        positions = torch.arange(start - 1, lengths[i] - 1, device=tokens.device)
        out.append(float(logp[i, positions, tokens[i, start : lengths[i]]].sum()))
    return out
