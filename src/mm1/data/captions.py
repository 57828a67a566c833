"""Image-caption pairs as megatron micro-batches, in a seeded order that every layout agrees on.

The global batch of step t is a fixed slice of a seeded permutation of the data (reshuffled each
epoch); data-parallel rank r takes micro-batches r, r + dp, r + 2 dp, ... of it. So the samples a
step sees do not depend on how the step is split across ranks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mm1.data.images import stack_images
from mm1.data.sequence import caption_sequence
from mm1.data.tokenizer import TextTokenizer
from mm1.world import read_split


@dataclass
class CaptionSet:
    """All pairs of a split, tokenised and decoded once (the miniature world fits in memory)."""

    ids: list[str]
    tokens: torch.Tensor  # (N, S)
    labels: torch.Tensor  # (N, S)
    loss_mask: torch.Tensor  # (N, S)
    images: torch.Tensor  # (N, 3, H, W)
    truncated: int

    def __len__(self) -> int:
        return len(self.ids)


def load_caption_set(
    path: Path, tok: TextTokenizer, num_image_tokens: int, seq_length: int, image_size: int
) -> CaptionSet:
    df = read_split(path)
    seqs = [caption_sequence(tok, c, num_image_tokens, seq_length) for c in df["caption"].to_list()]
    return CaptionSet(
        ids=df["id"].to_list(),
        tokens=torch.stack([s.tokens for s in seqs]),
        labels=torch.stack([s.labels for s in seqs]),
        loss_mask=torch.stack([s.loss_mask for s in seqs]),
        images=stack_images(df["image"].to_list(), image_size),
        truncated=sum(s.truncated for s in seqs),
    )


def global_batch_indices(n: int, global_batch: int, step: int, seed: int) -> np.ndarray:
    """Sample indices of optimizer step ``step`` (0-based): seeded permutation per epoch."""
    out = np.empty(global_batch, dtype=np.int64)
    start = step * global_batch
    for k in range(global_batch):
        epoch, pos = divmod(start + k, n)
        perm = _epoch_perm(n, seed, epoch)
        out[k] = perm[pos]
    return out


@functools.lru_cache(maxsize=4)
def _epoch_perm(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def micro_batches(
    data: CaptionSet, step: int, seed: int, global_batch: int, micro_batch: int, dp_rank: int, dp_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    """The micro-batches this data-parallel rank runs for optimizer step ``step``."""
    idx = global_batch_indices(len(data), global_batch, step, seed)
    chunks = idx.reshape(-1, micro_batch)  # (global / micro, micro)
    for chunk in chunks[dp_rank::dp_size]:
        sel = torch.from_numpy(chunk)
        yield {
            "tokens": data.tokens[sel],
            "labels": data.labels[sel],
            "loss_mask": data.loss_mask[sel],
            "images": data.images[sel],
        }
