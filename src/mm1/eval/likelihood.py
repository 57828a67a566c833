"""Scoring by likelihood: the log-probability of continuations after a context, no decoding.

For a context c and a choice x_1..x_m the score is sum_i log p(x_i | c, x_<i) (lm-eval-harness's
"acc"; no length normalisation). Context and choice are encoded separately ("The answer is" +
" 69"), so each choice's tokens are the same whatever the context ends with.

``continuation_logprobs`` runs each (context, continuation) pair as its own padded row (TextCore,
multiple choice: short contexts, few choices). ``prefix_logprobs`` scores many continuations of ONE
context, as a few-shot prompt with its answer candidates or reference captions; the context's
images and embeddings are computed once, then either
  * cache: the context goes through the decoder once and fills megatron's static KV cache, which
    is copied to every continuation's row; all continuations then advance one position per pass
    (sorted longest first, so the rows still running are always the first ones of the cache); or
  * rows: one pass of n rows, each the context's embeddings followed by one continuation.
Many short continuations (VQA candidates) favour the cache, a few long ones (reference captions)
the rows; ``method="auto"`` picks by ROWS_TOKENS_PER_STEP. Both give the same numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mm1.data.tokenizer import TextTokenizer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.inference.contexts import StaticInferenceContext


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


@torch.no_grad()
def prefix_logprobs(
    model: torch.nn.Module,
    tok: TextTokenizer,
    context: Sequence[int],
    images: torch.Tensor,  # (M, 3, H, W): the context's images in order
    continuations: Sequence[Sequence[int]],
    max_length: int,
    *,
    method: str = "auto",
) -> list[list[float]]:
    """Per continuation, the log-probability of each of its tokens after ``context`` (module docstring).
    method: "cache" (the context's KV cache shared, one position per pass), "rows" (one pass of
    n rows context + continuation, the context's embeddings and images computed once), or "auto":
    rows while they hold at most ROWS_TOKENS_PER_STEP tokens per cached pass saved, else cache."""
    if not context or not continuations or any(not c for c in continuations):
        raise ValueError("prefix_logprobs needs a non-empty context and continuations of at least one token")
    n, width, longest = len(continuations), len(context), max(len(c) for c in continuations)
    if width + longest > max_length:
        raise ValueError(f"a context + continuation of {width + longest} tokens exceeds the model's {max_length}")
    if method == "auto":
        method = "rows" if n * (width + longest) <= ROWS_TOKENS_PER_STEP * longest else "cache"
    order = sorted(range(n), key=lambda i: -len(continuations[i]))  # longest first
    conts = torch.full((n, longest), tok.pad_id, dtype=torch.long, device=images.device)  # (n, m)
    for row, i in enumerate(order):
        conts[row, : len(continuations[i])] = torch.as_tensor(list(continuations[i]), dtype=torch.long)
    tokens = torch.as_tensor([list(context)], dtype=torch.long, device=images.device)  # (1, L)
    run = {"cache": _cached, "rows": _rows}[method]
    out = run(model, tok, tokens, images, conts, [sum(len(c) > j for c in continuations) for j in range(longest)])
    by_row = {i: row for row, i in enumerate(order)}
    return [out[by_row[i], : len(continuations[i])].tolist() for i in range(n)]


ROWS_TOKENS_PER_STEP = 100
"""method="auto": rows when n x (context + longest) <= this x longest. Measured on one CPU thread with
the ablation model (2 x 128 decoder, 16 image tokens): a cached pass costs ~2.2 ms, a row token
~0.022 ms, so one pass saved is worth ~100 row tokens (5 captions of 18 tokens after 200: rows
27 ms, cache 50 ms; 40 answers of 4 tokens after 200: rows 163 ms, cache 43 ms). Both are exact."""


def _rows(model, tok, tokens, images, conts, running) -> torch.Tensor:
    n, (width, longest) = conts.shape[0], (tokens.shape[1], conts.shape[1])
    lm = model.language_model
    position = torch.arange(width + longest, device=tokens.device).unsqueeze(0).expand(n, -1)  # (n, S)
    prefix = model.embed(tokens, images).expand(-1, n, -1)  # (L, n, H)
    rest = lm.embedding(input_ids=conts, position_ids=position[:, width:])  # (m, n, H)
    logits = lm(input_ids=conts[:, :1], position_ids=position, attention_mask=None,
                decoder_input=torch.cat([prefix, rest]), runtime_gather_output=True)  # fmt: skip
    logp = torch.log_softmax(logits[:, width - 1 : -1, : tok.vocab_size].float(), dim=-1)  # (n, m, V)
    return logp.gather(2, conts.unsqueeze(-1))[..., 0].double()


def _cached(model, tok, tokens, images, conts, running) -> torch.Tensor:
    n, (width, longest) = conts.shape[0], (tokens.shape[1], conts.shape[1])
    lm = model.language_model
    cache = StaticInferenceContext(max_batch_size=n, max_sequence_length=width + longest)
    position = torch.arange(width + longest, device=tokens.device).unsqueeze(0)  # (1, S)

    def step(decoder_input: torch.Tensor, start: int) -> torch.Tensor:  # (T, B, H) -> (B, V) log-probs
        b, stop = decoder_input.shape[1], start + decoder_input.shape[0]
        logits = lm(input_ids=tokens[:, :1].expand(b, 1), position_ids=position[:, start:stop].expand(b, -1),
                    attention_mask=None, decoder_input=decoder_input, inference_context=cache,
                    runtime_gather_output=True)  # fmt: skip
        cache.sequence_len_offset = stop
        return torch.log_softmax(logits[:, -1, : tok.vocab_size].float(), dim=-1)

    logp = step(model.embed(tokens, images), 0).expand(n, -1)  # the context once, batch row 0
    for key, value in cache.key_value_memory_dict.values():  # (S, n, groups, dim): row 0 -> every row
        key[:width, 1:] = key[:width, :1]
        value[:width, 1:] = value[:width, :1]
    out = torch.zeros(n, longest, dtype=torch.float64)
    out[:, 0] = logp.gather(1, conts[:, :1])[:, 0].double()
    for j in range(1, longest):
        b = running[j]  # the rows still running: the first b (longest first)
        pos = position[:, width + j - 1 : width + j].expand(b, 1)
        fed = lm.embedding(input_ids=conts[:b, j - 1 : j], position_ids=pos)  # (1, b, H)
        out[:b, j] = step(fed, width + j - 1).gather(1, conts[:b, j : j + 1])[:, 0].double()
    return out
