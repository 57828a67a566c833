"""Scoring by likelihood: the log-probability of continuations after a context, no decoding.

For a context c and a choice x_1..x_m the score is sum_i log p(x_i | c, x_<i) (lm-eval-harness's
"acc"; no length normalisation). Context and choice are encoded separately ("The answer is" +
" 69"), so each choice's tokens are the same whatever the context ends with.

``continuation_logprobs`` runs each (context, continuation) pair as its own padded row (TextCore,
multiple choice: short contexts, few choices; the reference the packed scorer is tested against).
``prefix_logprobs`` scores many continuations of each of many contexts (few-shot prompts with their
answer candidates or reference captions) with the context computed once: every context and all its
continuations are packed into ONE row, ``context | cont_1 | cont_2 | ...``, and an attention mask
lets each continuation see the context and its own earlier tokens only (a prefix tree flattened into
a row). Each token keeps its true position (the i-th token of a continuation sits at position
len(context) + i, for the rotary and learned position embeddings alike), so every continuation gets
the logits it would get right after its context, up to float rounding. Rows are sorted by length and
packed into micro-batches of at most ``batch_tokens`` padded tokens; the output layer runs only on
the positions that predict a continuation token. Images come pre-encoded: ``image_tokens`` holds each
distinct image once, and a prompt names its images by row (demonstration images recur across items).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mm1.data.tokenizer import TextTokenizer
from mm1.eval.shard import map_batches
from mm1.models.mm1_model import splice_images
from mm1.progress import progress


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


@dataclass(frozen=True)
class Prefixed:
    """One context, the continuations scored after it, and its images as rows of ``image_tokens``."""

    context: list[int]
    continuations: list[list[int]]
    images: list[int]


BATCH_TOKENS = 2048
"""prefix_logprobs: padded tokens per micro-batch (rows x widest packed row). Measured on one CPU
thread with the ablation model (2 x 128 decoder, 16 image tokens, packed rows of 20-370 tokens),
coco + vqav2 + textvqa at 0/4/8 shots: 1024: 6.1 s, 1536: 5.7, 2048: 5.7, 3072: 5.9, 4096: 6.2;
8192 and 16384 were 12% and 25% slower than 4096 (the batch's working set outgrows the caches)."""


@torch.no_grad()
def prefix_logprobs(
    model: torch.nn.Module,
    tok: TextTokenizer,
    prompts: Sequence[Prefixed],
    image_tokens: torch.Tensor,  # (U, N, H): the distinct images of all prompts, encoded
    max_length: int,
    *,
    batch_tokens: int = BATCH_TOKENS,
    desc: str | None = None,
) -> list[list[list[float]]]:
    """Per prompt, per continuation, the log-probability of each of its tokens after the context."""
    for p in prompts:
        if not p.context or not p.continuations or any(not c for c in p.continuations):
            raise ValueError("prefix_logprobs needs a non-empty context and continuations of at least one token")
        longest = len(p.context) + max(len(c) for c in p.continuations)
        if longest > max_length:
            raise ValueError(f"a context + continuation of {longest} tokens exceeds the model's {max_length}")
    width = [len(p.context) + sum(len(c) for c in p.continuations) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: width[i])
    batches, start = [], 0
    while start < len(order):  # rows sorted by width: a batch ends where it would pass batch_tokens
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * width[order[stop]] <= batch_tokens:
            stop += 1
        batches.append(order[start:stop])
        start = stop
    out: list[list[list[float]]] = [[] for _ in prompts]
    wrap = (lambda b: progress(b, desc=desc, unit="batch")) if desc else iter
    scored = map_batches(batches, lambda batch: _packed(model, tok, [prompts[i] for i in batch], image_tokens), wrap)
    for batch, part in zip(batches, scored, strict=True):  # each batch on its data-parallel rank (mm1.eval.shard)
        for i, scores in zip(batch, part, strict=True):
            out[i] = scores
    return out


def _packed(model, tok: TextTokenizer, prompts: list[Prefixed], image_tokens: torch.Tensor) -> list[list[list[float]]]:
    """One forward pass of the prompts' packed rows (module docstring)."""
    device, b = image_tokens.device, len(prompts)
    width = max(len(p.context) + sum(len(c) for c in p.continuations) for p in prompts)
    ids = torch.full((b, width), tok.pad_id, dtype=torch.long)
    position = torch.zeros(b, width, dtype=torch.long)
    segment = torch.full((b, width), -1, dtype=torch.long)  # 0: the context, j: continuation j, -1: padding
    rows, sources, targets = [], [], []  # per scored token: its row, the index that predicts it, its index
    for r, p in enumerate(prompts):
        n = len(p.context)
        row_ids, row_position, row_segment = list(p.context), list(range(n)), [0] * n
        for j, cont in enumerate(p.continuations, start=1):
            at, m = len(row_ids), len(cont)
            rows += [r] * m
            sources += [n - 1, *range(at, at + m - 1)]
            targets += range(at, at + m)
            row_ids += cont
            row_position += range(n, n + m)
            row_segment += [j] * m
        ids[r, : len(row_ids)] = torch.tensor(row_ids)
        position[r, : len(row_ids)] = torch.tensor(row_position)
        segment[r, : len(row_ids)] = torch.tensor(row_segment)
    # a query sees the keys before it that are context or its own continuation (padding: the context and padding)
    index = torch.arange(width)
    seen = (index[None, :] <= index[:, None]) & (
        (segment[:, None, :] == 0) | (segment[:, None, :] == segment[:, :, None])
    )
    ids, position, seen = ids.to(device), position.to(device), seen.to(device)
    lm = model.language_model
    text = lm.embedding(input_ids=ids, position_ids=position)  # (S, B, H); learned positions: the true ones
    slots = [i for p in prompts for i in p.images]
    hidden = splice_images(text, image_tokens[slots], ids == model.image_token_id)
    rotary = None
    if lm.position_embedding_type == "rope":
        rotary = lm.rotary_pos_emb(int(position.max()) + 1)[:, 0][position.T]  # (S, B, 1, D): each token's own
    hidden = lm.decoder(hidden_states=hidden, attention_mask=~seen.unsqueeze(1), rotary_pos_emb=rotary)  # (S, B, H)
    rows_t = torch.as_tensor(rows, device=device)
    picked = hidden[torch.as_tensor(sources, device=device), rows_t]  # (T, H): only the predicting positions
    logits, _ = lm.output_layer(picked.unsqueeze(1), runtime_gather_output=True)  # (T, 1, V)
    logp = torch.log_softmax(logits[:, 0, : tok.vocab_size].float(), dim=-1)
    scored = logp.gather(1, ids[rows_t, torch.as_tensor(targets, device=device)].unsqueeze(1))[:, 0].tolist()
    out, at = [], 0
    for p in prompts:
        per = []
        for cont in p.continuations:
            per.append(scored[at : at + len(cont)])
            at += len(cont)
        out.append(per)
    return out
