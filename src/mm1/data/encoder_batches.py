"""Batches for pre-training the image encoder alone (MM1 Table 1): CLIP pairs or AIM images.

The records are the world's (or acquired) caption pairs, read as the tokenizer and pack stages
read them (:func:`load_caption_samples`). Order, as in :mod:`mm1.data.batches`: global position
p = step * B + k (B = global batch) is record ``perm(epoch)[p % n]`` with epoch = p // n, a seeded
permutation reshuffled every epoch, so step t takes pairs [t B, (t + 1) B) and wraps into the next
epoch; data-parallel rank r runs micro-batches r, r + dp, ... of it. Everything is a function of
(seed, step): resuming needs only the step.

    CLIP  {"images": (B, 3, H, W), "text": (B, T) caption ids right-padded with <pad>, "text_lengths": (B,)}
    AIM   {"images": (B, 3, H, W)}

A caption is its ids cut to T - 1 tokens plus ``<eoc>`` (T = clip.text_seq_length), so ``<eoc>``
is always its last real token (the one the text tower reads). As in the pre-training mixture, a
pair uses its synthetic caption with probability ``synthetic_captions``, drawn per (epoch, record).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from mm1.config.model import EncoderConfig
from mm1.data.images import stack_images
from mm1.data.quarantine import Quarantine
from mm1.data.records import CaptionSample
from mm1.data.sources import load_pretraining_sources
from mm1.data.tokenizer import TextTokenizer


def load_caption_samples(manifest: Path, quarantine: Quarantine) -> list[CaptionSample]:
    """The manifest's caption pairs, read as every pre-training stage reads them."""
    return load_pretraining_sources(manifest, quarantine)["caption"]  # type: ignore[return-value]


def caption_token_ids(tok: TextTokenizer, text: str) -> np.ndarray:
    """A caption's ids without special tokens (a caption that spells one is not cut short by it). (L,) int64"""
    raw = np.asarray(tok.encode(text), dtype=np.int64)
    specials = [tok.pad_id, tok.bos_id, tok.eos_id, tok.image_id, tok.eoc_id]
    return raw[~np.isin(raw, specials)]


def cut_caption(tok: TextTokenizer, ids: np.ndarray, seq_length: int) -> np.ndarray:
    """``ids`` cut to ``seq_length - 1`` tokens plus <eoc>, the token the text tower reads. (L,) int64"""
    return np.append(ids[: seq_length - 1], tok.eoc_id)


def caption_tensors(tok: TextTokenizer, captions: Sequence[np.ndarray], seq_length: int) -> dict[str, torch.Tensor]:
    """Cut captions (:func:`cut_caption`) as the text tower reads them:
    {"text": (B, T) right-padded with <pad>, "text_lengths": (B,)}."""
    text = torch.full((len(captions), seq_length), tok.pad_id, dtype=torch.long)
    for row, ids in enumerate(captions):
        text[row, : len(ids)] = torch.from_numpy(ids)
    return {"text": text, "text_lengths": torch.tensor([len(ids) for ids in captions], dtype=torch.long)}


@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, 4, epoch]).permutation(n)


@functools.lru_cache(maxsize=8)
def _synthetic(n: int, seed: int, epoch: int, share: float) -> np.ndarray:
    return np.random.default_rng([seed, 5, epoch]).random(n) < share


class EncoderBatches:
    """Seeded, step-indexed batches of caption pairs; with a tokenizer CLIP batches, else AIM's."""

    def __init__(
        self,
        samples: Sequence[CaptionSample],
        image_size: int,
        seed: int,
        tokenizer: TextTokenizer | None = None,
        text_seq_length: int = 32,
        synthetic_captions: float = 0.07,
    ) -> None:
        if not samples:
            raise ValueError("no caption pairs to pre-train the encoder on; check the manifest's caption files")
        if text_seq_length < 2:
            raise ValueError(f"text_seq_length must leave room for a token and <eoc>, got {text_seq_length}")
        if not 0 <= synthetic_captions <= 1:
            raise ValueError(f"synthetic_captions must lie in [0, 1], got {synthetic_captions}")
        self.samples, self.image_size, self.seed, self.tok = samples, image_size, seed, tokenizer
        self.text_seq_length, self.share = text_seq_length, synthetic_captions
        self._cache: dict[tuple[int, str], np.ndarray] = {}

    @classmethod
    def for_encoder(
        cls,
        cfg: EncoderConfig,
        samples: Sequence[CaptionSample],
        seed: int,
        tokenizer: TextTokenizer | None,
        synthetic_captions: float = 0.07,
    ) -> EncoderBatches:
        """Batches for ``cfg.objective`` at ``cfg.image_size`` (CLIP needs the tokenizer)."""
        if cfg.objective == "aim":
            return cls(samples, cfg.image_size, seed)
        if tokenizer is None:
            raise ValueError("CLIP pre-training reads captions: pass the run's tokenizer")
        return cls(samples, cfg.image_size, seed, tokenizer, cfg.clip.text_seq_length, synthetic_captions)

    def __len__(self) -> int:
        return len(self.samples)

    def positions(self, step: int, global_batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(epoch, record index) of each of step ``step``'s ``global_batch`` pairs, (B,) each."""
        n = len(self.samples)
        epochs, pos = np.divmod(np.arange(global_batch) + step * global_batch, n)
        records = np.array([_permutation(n, self.seed, int(e))[p] for e, p in zip(epochs, pos, strict=True)])
        return epochs, records.astype(np.int64)

    def caption_ids(self, epoch: int, idx: int) -> np.ndarray:
        """Caption ids of record ``idx`` in ``epoch`` (its drawn style), cut, ending in <eoc>. (L,) int64"""
        if self.tok is None:
            raise ValueError("these batches have no tokenizer (AIM); captions need one")
        rec = self.samples[idx]
        style = "synthetic" if _synthetic(len(self.samples), self.seed, epoch, self.share)[idx] else "alt"
        if style not in rec.captions:  # fall back as the mixture does: the other style, then any
            style = next((s for s in ("synthetic", "alt", *sorted(rec.captions)) if s in rec.captions), "")
            if not style:
                raise ValueError(f"caption sample {rec.key!r} has no caption")
        ids = self._cache.get((idx, style))
        if ids is None:
            ids = self._cache[(idx, style)] = caption_token_ids(self.tok, rec.captions[style])
        return cut_caption(self.tok, ids, self.text_seq_length)

    def batch(self, epochs: np.ndarray, records: np.ndarray) -> dict[str, torch.Tensor]:
        """The pairs (epoch, record) as tensors: images, plus text and text_lengths for CLIP."""
        out = {"images": stack_images([self.samples[int(i)].image for i in records], self.image_size)}
        if self.tok is not None:
            captions = [self.caption_ids(int(e), int(i)) for e, i in zip(epochs, records, strict=True)]
            out |= caption_tensors(self.tok, captions, self.text_seq_length)  # text (B, T), text_lengths (B,)
        return out

    def global_batch(self, step: int, global_batch: int) -> dict[str, torch.Tensor]:
        """All of step ``step``'s pairs in one batch."""
        return self.batch(*self.positions(step, global_batch))

    def micro_batches(
        self, step: int, global_batch: int, micro_batch: int, dp_rank: int, dp_size: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        """The micro-batches data-parallel rank ``dp_rank`` runs for step ``step``, as in :func:`batches.micro_batches`."""
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank must lie in [0, dp_size={dp_size}), got {dp_rank}")
        if global_batch % (micro_batch * dp_size):
            raise ValueError(
                f"global_batch={global_batch} must be a multiple of micro_batch*dp={micro_batch * dp_size}"
            )
        epochs, records = self.positions(step, global_batch)
        chunks = np.arange(global_batch).reshape(-1, micro_batch)
        for chunk in chunks[dp_rank::dp_size]:
            yield self.batch(epochs[chunk], records[chunk])
