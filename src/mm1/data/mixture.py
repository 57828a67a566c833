"""The pre-training mixture: which data type each sequence comes from, and which records fill it.

The sampler produces one global stream of packed sequences, the same on every data-parallel rank;
rank r yields global sequences r, r + dp, r + 2 dp, ... Every rank walks the whole stream (the
records a sequence takes depend on what the sequences before it took) but packs only its own.

- Source of global sequence i: stratified by blocks of ``BLOCK`` sequences. Each block holds
  floor or ceil of ``fraction * BLOCK`` sequences of every source, in a seeded random order; so a
  sequence's marginal chance is the configured fraction and realised shares stay within
  1 / BLOCK of it. Sources with weight 0 are never drawn.
- Within a source, records are taken in a seeded permutation, reshuffled every epoch. Caption
  pairs and interleaved documents are packed several per sequence, back to back in that order
  (one that does not fit, in tokens or images, starts the next sequence of its source; a
  document longer than a whole sequence is cut and its rest dropped); text is one continuous
  stream ``doc <eos> doc <eos> ...`` split into sequences (nothing is dropped).
- Whether a caption pair uses its synthetic caption is a seeded draw per (epoch, record).

All draws are functions of (seed, position), so ``state_dict`` is just the global position and
the per-source cursors; after any number of yields it is the same on every rank.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import polars as pl

from mm1.config.data import MixtureConfig
from mm1.data.packing import SOURCES, PackedSequence, PackLayout
from mm1.data.record_streams import CaptionStream, InterleavedStream, Stream, TextStream
from mm1.data.tokenizer import TextTokenizer

BLOCK = 1000
"""Sequences per stratified block of source draws."""
STATE_FORMAT = 2
"""Version of ``state_dict``; 2: interleaved documents are packed several per sequence, so a
format-1 cursor would not continue the same stream."""


class MixtureSampler:
    """An endless, seeded, resumable stream of packed pre-training sequences for one DP rank."""

    def __init__(
        self,
        sources: dict[str, Sequence[Any]],
        mixture: MixtureConfig,
        tokenizer: TextTokenizer,
        seq_length: int,
        image_tokens: int,
        seed: int,
        dp_rank: int = 0,
        dp_size: int = 1,
    ) -> None:
        unknown = sorted(set(sources) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown mixture sources {unknown}; expected keys among {list(SOURCES)}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank must be in [0, dp_size={dp_size}), got {dp_rank}")
        fractions = mixture.fractions
        for name in SOURCES:
            if fractions[name] > 0 and not len(sources.get(name, ())):
                raise ValueError(
                    f"mixture weight {name}={getattr(mixture, name)} is positive but the {name} source has no "
                    f"records; provide {name} data or set data.mixture.{name}=0"
                )
        self.mixture, self.seed, self.dp_rank, self.dp_size = mixture, seed, dp_rank, dp_size
        self.layout = PackLayout.from_tokenizer(tokenizer, seq_length, image_tokens, mixture.max_images_per_sequence)
        self.active = tuple(s for s in SOURCES if fractions[s] > 0)
        cdf = np.cumsum([fractions[s] for s in self.active])
        cdf[-1] = 1.0
        self._cdf = cdf.tobytes()  # hashable key of the block cache
        self._streams: dict[str, Stream] = {}
        if "caption" in self.active:
            share = mixture.synthetic_captions
            self._streams["caption"] = CaptionStream(sources["caption"], self.layout, tokenizer, seed, share)
        if "interleaved" in self.active:
            self._streams["interleaved"] = InterleavedStream(sources["interleaved"], self.layout, tokenizer, seed)
        if "text" in self.active:
            self._streams["text"] = TextStream(sources["text"], self.layout, tokenizer, seed)
        self._fingerprint = {
            "seed": seed,
            "seq_length": seq_length,
            "image_tokens": image_tokens,
            "mixture": mixture.model_dump(),
            "records": {s: len(sources.get(s, ())) for s in SOURCES},
            "vocab_size": tokenizer.vocab_size,
        }
        self._next = 0  # global index of the next sequence to walk; a multiple of dp_size after a yield

    @property
    def next_index(self) -> int:
        """Global index of the first sequence of the next round (this rank's next is + dp_rank)."""
        return self._next

    def source_of(self, index: int) -> str:
        """The source of global sequence ``index``."""
        return self.active[_block_sources(self._cdf, self.seed, index // BLOCK)[index % BLOCK]]

    def __iter__(self) -> MixtureSampler:
        return self

    def __next__(self) -> PackedSequence:
        start, mine = self._next, self._next + self.dp_rank
        for i in range(start, mine):  # the ranks before this one: move the cursors only
            self._streams[self.source_of(i)].take()
        stream = self._streams[self.source_of(mine)]
        out = stream.build(stream.take())  # type: ignore[arg-type]
        for i in range(mine + 1, start + self.dp_size):  # the ranks after it
            self._streams[self.source_of(i)].take()
        self._next = start + self.dp_size
        return out

    def state_dict(self) -> dict[str, Any]:
        """Position in the global stream and per-source cursors: JSON-able, identical on every rank."""
        return {
            "format": STATE_FORMAT,
            "next_index": self._next,
            "cursors": {name: stream.cursor() for name, stream in self._streams.items()},
            "fingerprint": copy.deepcopy(self._fingerprint),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where ``state`` was taken; the DP layout may differ from the one that saved it."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"sampler state format {state.get('format')!r} is not {STATE_FORMAT}")
        saved = state["fingerprint"]
        diff = sorted(k for k in self._fingerprint.keys() | saved.keys() if self._fingerprint.get(k) != saved.get(k))
        if diff:
            raise ValueError(f"sampler state was saved with different {diff}: {[saved.get(k) for k in diff]}")
        for name, stream in self._streams.items():
            stream.set_cursor(state["cursors"][name])
        self._next = int(state["next_index"])

    def realised_mixture(self, sequences: Sequence[PackedSequence]) -> pl.DataFrame:
        """:func:`realised_mixture` with this sampler's pad id and configured fractions."""
        return realised_mixture(sequences, self.layout.pad_id, self.mixture)

    def tally(self) -> MixtureTally:
        """An empty :class:`MixtureTally` with this sampler's pad id and configured fractions."""
        return MixtureTally(self.layout.pad_id, self.mixture)


@functools.lru_cache(maxsize=4)
def _block_sources(cdf: bytes, seed: int, block: int) -> np.ndarray:
    """Source ids (indices into the active sources) of one block: systematic sampling, shuffled."""
    rng = np.random.default_rng([seed, 0, block])
    u = (np.arange(BLOCK) + rng.random()) / BLOCK
    ids = np.searchsorted(np.frombuffer(cdf), u, side="right")
    return rng.permutation(ids).astype(np.int8)


class MixtureTally:
    """The counts of :func:`realised_mixture`, fed one sequence at a time (memory independent of
    how many): :meth:`add` each, :meth:`frame` for the table."""

    def __init__(self, pad_id: int, mixture: MixtureConfig | None = None) -> None:
        self.pad_id, self.mixture = pad_id, mixture
        self.counts = {s: [0, 0, 0, 0, 0] for s in SOURCES}  # sequences, tokens, loss tokens, images, positions

    def add(self, seq: PackedSequence) -> PackedSequence:
        """Count ``seq``; returns it (so a stream of sequences can be counted as it passes)."""
        row = self.counts[seq.source]
        row[0] += 1
        row[1] += int(np.count_nonzero(seq.tokens[:-1] != self.pad_id))
        row[2] += int(np.count_nonzero(seq.loss_mask))
        row[3] += len(seq.images)
        row[4] += seq.seq_length
        return seq

    def frame(self) -> pl.DataFrame:
        """The realised mixture of the sequences added so far (see :func:`realised_mixture`)."""
        mixture = self.mixture
        cols = list(zip(*self.counts.values(), strict=True))
        df = pl.DataFrame(
            {
                "source": list(SOURCES),
                "sequences": cols[0],
                "tokens": cols[1],
                "loss_tokens": cols[2],
                "images": cols[3],
                "padding": [1 - t / p if p else 0.0 for t, p in zip(cols[1], cols[4], strict=True)],
            },
            schema_overrides={c: pl.Int64 for c in ("sequences", "tokens", "loss_tokens", "images")},
        )
        share = {c: pl.col(c) / pl.col(c).sum() if sum(cols[k]) else pl.lit(0.0) for k, c in enumerate(df.columns[1:5])}
        df = df.with_columns(
            sequence_share=share["sequences"],
            token_share=share["tokens"],
            loss_token_share=share["loss_tokens"],
            image_share=share["images"],
        )
        if mixture is not None:
            df = df.with_columns(target_share=pl.Series([mixture.fractions[s] for s in SOURCES]))
        return df.select(
            "source",
            *(c for c in ("target_share",) if mixture is not None),
            "sequences",
            "sequence_share",
            "tokens",
            "token_share",
            "loss_tokens",
            "loss_token_share",
            "images",
            "image_share",
            "padding",
        )


def realised_mixture(
    sequences: Iterable[PackedSequence], pad_id: int, mixture: MixtureConfig | None = None
) -> pl.DataFrame:
    """Per source (one row each, always): sequences, non-pad input tokens (of tokens[:-1]), loss
    tokens and images, with their shares; ``padding``, the share of that source's input positions
    that are ``<pad>`` (0 without sequences); plus the configured fraction when ``mixture`` is given."""
    tally = MixtureTally(pad_id, mixture)
    for seq in sequences:
        tally.add(seq)
    return tally.frame()
