"""Packed sequences as megatron micro-batches, in an order every parallel layout agrees on.

The packed file holds the global stream of sequences (the pack stage wrote exactly what the run
needs). Optimizer step t uses sequences [t * G, (t + 1) * G) (G = global batch, wrapping around
when the file is shorter); data-parallel rank r runs micro-batches r, r + dp, r + 2 dp, ... of it,
so a step sees the same sequences whatever the layout. :class:`PackedData` holds a whole file in
memory (tests, small files); the trainer streams the same micro-batches from disk
(:mod:`mm1.data.stream`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mm1.data.images import stack_images
from mm1.data.packed_io import read_packed
from mm1.data.packing import PackedSequence


@dataclass
class PackedData:
    """The packed sequences of a run, with the resolution images are decoded at."""

    sequences: list[PackedSequence]
    image_size: int

    @classmethod
    def load(cls, path: Path, seq_length: int, image_size: int) -> PackedData:
        sequences = read_packed(Path(path))
        if not sequences:
            raise ValueError(f"{path} holds no sequences; rerun the pack stage")
        found = len(sequences[0].loss_mask)
        if found != seq_length:
            raise ValueError(
                f"{path} was packed for seq_length={found} but model.decoder.seq_length={seq_length}; "
                "rerun the pack stage with this config"
            )
        return cls(sequences, image_size)

    def __len__(self) -> int:
        return len(self.sequences)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """tokens/labels/loss_mask (B, S) and the batch's images (M, 3, H, W) in reading order."""
        seqs = [self.sequences[i] for i in indices]
        full = torch.from_numpy(np.stack([s.tokens for s in seqs]).astype(np.int64))
        return {
            "tokens": full[:, :-1],
            "labels": full[:, 1:],
            "loss_mask": torch.from_numpy(np.stack([s.loss_mask for s in seqs]).astype(np.float32)),
            "images": stack_images([im for s in seqs for im in s.images], self.image_size),
        }


def step_indices(n: int, global_batch: int, step: int) -> np.ndarray:
    """Indices of the sequences of optimizer step ``step`` (0-based), wrapping around ``n``."""
    return (np.arange(global_batch) + step * global_batch) % n


def rank_chunks(n: int, step: int, global_batch: int, micro_batch: int, dp_rank: int, dp_size: int) -> np.ndarray:
    """(micro-batches, micro_batch) indices data-parallel rank ``dp_rank`` runs for step ``step``."""
    return step_indices(n, global_batch, step).reshape(-1, micro_batch)[dp_rank::dp_size]


def micro_batches(
    data: PackedData, step: int, global_batch: int, micro_batch: int, dp_rank: int, dp_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    """The micro-batches this data-parallel rank runs for optimizer step ``step``."""
    for chunk in rank_chunks(len(data), step, global_batch, micro_batch, dp_rank, dp_size):
        yield data.batch(chunk)
