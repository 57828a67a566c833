"""Greedy decoding with the MM1 model (full re-forward per token: sequences here are short)."""

from __future__ import annotations

import torch

from mm1.data.tokenizer import TextTokenizer


@torch.no_grad()
def greedy(
    model: torch.nn.Module,
    tok: TextTokenizer,
    prompts: list[list[int]],
    images: torch.Tensor,  # (B, 3, H, W)
    seq_length: int,
    max_new_tokens: int,
) -> list[list[int]]:
    """Continue each prompt until <eos>/<eoc> or ``max_new_tokens``; returns the generated ids (no stop token)."""
    b = len(prompts)
    lengths = [len(p) for p in prompts]
    if max(lengths) >= seq_length:
        raise ValueError(f"a prompt of {max(lengths)} tokens leaves no room in seq_length={seq_length}")
    tokens = torch.full((b, seq_length), tok.pad_id, dtype=torch.long, device=images.device)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(p)
    banned = torch.tensor([tok.pad_id, tok.bos_id, tok.image_id], device=images.device)
    cursor = torch.tensor(lengths, device=images.device)
    done = torch.zeros(b, dtype=torch.bool)
    out: list[list[int]] = [[] for _ in range(b)]
    for _ in range(max_new_tokens):
        if done.all() or int(cursor.max()) >= seq_length:
            break
        logits = model(tokens, images)  # (B, S, V_padded)
        last = logits[torch.arange(b, device=images.device), cursor - 1, : tok.vocab_size].float()
        last[:, banned] = float("-inf")
        nxt = last.argmax(dim=-1)
        for i in range(b):
            if done[i] or cursor[i] >= seq_length:
                done[i] = True
                continue
            if int(nxt[i]) in (tok.eos_id, tok.eoc_id):
                done[i] = True
                continue
            tokens[i, cursor[i]] = nxt[i]
            out[i].append(int(nxt[i]))
            cursor[i] += 1
    return out
