"""Greedy decoding with the MM1 model, batched, with a KV cache.

Prompts of one batch may differ in length and image count. They are right-padded; the first
forward pass ("prefill") runs the shortest prompt length L0 through the decoder and fills
megatron's static KV cache (`StaticInferenceContext`); every later pass feeds one position per
sequence: the sequence's own prompt token while it is still inside its prompt, else the token it
generated last. Every sequence is thus contiguous from position 0, so the cache needs no padding
mask, and each sequence gets exactly the logits it would get alone (up to float rounding).

The image slots of all prompts are filled before the prefill: the embeddings of the whole prompt
(text and spliced image tokens) are computed once, and later passes read their rows.

Under tensor parallelism each rank caches its own heads; the logits are gathered over the vocab
so every rank takes the same argmax. ``greedy(..., cache=False)`` re-runs the whole prefix for
every new token: the reference the cached path is tested and benchmarked against.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from mm1.data.tokenizer import TextTokenizer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.inference.contexts import StaticInferenceContext


def _stops_and_bans(tok: TextTokenizer, device: torch.device) -> tuple[set[int], torch.Tensor]:
    """Generation ends at <eos> or <eoc>; <pad>, <bos> and <image> are never generated."""
    return {tok.eos_id, tok.eoc_id}, torch.tensor([tok.pad_id, tok.bos_id, tok.image_id], device=device)


def _check(prompts: Sequence[Sequence[int]], max_length: int) -> None:
    if not prompts:
        raise ValueError("greedy needs at least one prompt")
    longest = max(len(p) for p in prompts)
    if min(len(p) for p in prompts) == 0:
        raise ValueError("every prompt needs at least one token (<bos>)")
    if longest >= max_length:
        raise ValueError(f"a prompt of {longest} tokens leaves no room to generate within max_length={max_length}")


@torch.no_grad()
def greedy(
    model: torch.nn.Module,
    tok: TextTokenizer,
    prompts: Sequence[Sequence[int]],
    images: torch.Tensor,  # (M, 3, H, W): the images of all prompts, in reading order
    max_length: int,
    max_new_tokens: int,
    *,
    cache: bool = True,
) -> list[list[int]]:
    """Continue each prompt greedily until <eos>/<eoc>, ``max_new_tokens`` or ``max_length``
    tokens in all; returns the generated ids of each prompt (without the stop token)."""
    _check(prompts, max_length)
    run = _greedy_cached if cache else _greedy_recompute
    return run(model, tok, prompts, images, max_length, max_new_tokens)


def _padded(tok: TextTokenizer, prompts: Sequence[Sequence[int]], width: int, device: torch.device) -> torch.Tensor:
    tokens = torch.full((len(prompts), width), tok.pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
    return tokens


class _Outputs:
    """Per-sequence generated ids and the stop rule."""

    def __init__(self, tok: TextTokenizer, lengths: list[int], max_length: int, max_new_tokens: int, device) -> None:
        self.stops, self.banned = _stops_and_bans(tok, device)
        self.vocab = tok.vocab_size
        self.lengths = lengths
        self.limit = [min(max_new_tokens, max_length - n) for n in lengths]
        self.ids: list[list[int]] = [[] for _ in lengths]
        self.done = [lim <= 0 for lim in self.limit]

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V_padded) logits -> (B,) argmax over the real vocabulary, banned ids excluded."""
        last = logits[:, : self.vocab].float()
        last[:, self.banned] = float("-inf")
        return last.argmax(dim=-1)

    def take(self, i: int, token: int) -> None:
        if self.done[i]:
            return
        if token in self.stops:
            self.done[i] = True
            return
        self.ids[i].append(token)
        self.done[i] = len(self.ids[i]) >= self.limit[i]


def _greedy_cached(model, tok, prompts, images, max_length, max_new_tokens) -> list[list[int]]:
    device = images.device
    lengths = [len(p) for p in prompts]
    out = _Outputs(tok, lengths, max_length, max_new_tokens, device)
    width = max(lengths)
    tokens = _padded(tok, prompts, width, device)
    embeds = model.embed(tokens, images)  # (width, B, H)
    lm = model.language_model
    b, l0 = len(prompts), min(lengths)
    total = max(n + lim for n, lim in zip(lengths, out.limit, strict=True))
    context = StaticInferenceContext(max_batch_size=b, max_sequence_length=total)
    position = torch.arange(total, device=device).unsqueeze(0).expand(b, -1)

    def step(decoder_input: torch.Tensor, start: int) -> torch.Tensor:
        stop = start + decoder_input.shape[0]
        logits = lm(
            input_ids=tokens[:, :1],  # unused: decoder_input is given
            position_ids=position[:, start:stop],
            attention_mask=None,
            decoder_input=decoder_input,
            inference_context=context,
            runtime_gather_output=True,
        )
        context.sequence_len_offset = stop
        return logits[:, -1]  # (B, V): the prediction for position `stop`

    logits = step(embeds[:l0], 0)
    for pos in range(l0, total):  # pos: the position whose input is fed now
        nxt = out.pick(logits)
        for i in range(b):
            if pos >= lengths[i]:
                out.take(i, int(nxt[i]))
        if all(out.done):
            break
        fed = model.language_model.embedding(input_ids=nxt.unsqueeze(1), position_ids=position[:, pos : pos + 1])
        inside = torch.tensor([pos < n for n in lengths], device=device)
        if inside.any():
            fed = torch.where(inside.view(1, b, 1), embeds[pos : pos + 1], fed)
        logits = step(fed, pos)
    return out.ids


def _greedy_recompute(model, tok, prompts, images, max_length, max_new_tokens) -> list[list[int]]:
    device = images.device
    lengths = [len(p) for p in prompts]
    out = _Outputs(tok, lengths, max_length, max_new_tokens, device)
    total = max(n + lim for n, lim in zip(lengths, out.limit, strict=True))
    tokens = _padded(tok, prompts, total, device)
    cursor = list(lengths)
    rows = torch.arange(len(prompts), device=device)
    while not all(out.done):
        logits = model(tokens[:, : max(cursor)], images, gather_logits=True)  # (B, S, V)
        nxt = out.pick(logits[rows, torch.tensor(cursor, device=device) - 1])
        for i in range(len(prompts)):
            if out.done[i]:
                continue
            out.take(i, int(nxt[i]))
            if not out.done[i]:
                tokens[i, cursor[i]] = nxt[i]
                cursor[i] += 1
    return out.ids
