"""The records of one source, taken in a seeded per-epoch order and cut into sequence pieces.

Each stream has a cursor into a seeded permutation of its records (reshuffled each epoch) and two
steps: ``take()`` advances the cursor by what the next sequence of this source uses and returns
cheap references to it; ``build(pieces)`` packs them (:mod:`mm1.data.packing`). A data-parallel
rank calls ``take`` for every global sequence and ``build`` only for its own, so all ranks move
their cursors alike. Text is tokenised on first use and cached per record.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from mm1.data.packing import (
    PackedSequence,
    PackLayout,
    Segment,
    caption_sequence,
    captions_that_fit,
    document_size,
    documents_that_fit,
    encode_text,
    interleaved_sequence,
    text_sequence,
)
from mm1.data.records import CaptionSample, InterleavedDoc, TextDoc
from mm1.data.tokenizer import TextTokenizer


class Order:
    """A cursor into a seeded permutation of ``n`` records, reshuffled every epoch."""

    def __init__(self, n: int, seed: int, tag: int) -> None:
        self.n, self.seed, self.tag = n, seed, tag
        self.epoch, self.pos = 0, 0

    def peek(self, k: int = 0) -> tuple[int, int]:
        """(epoch, record index) of the k-th record from the cursor."""
        epoch, pos = divmod(self.epoch * self.n + self.pos + k, self.n)
        return epoch, int(_permutation(self.n, self.seed, self.tag, epoch)[pos])

    def advance(self, k: int = 1) -> None:
        self.epoch, self.pos = divmod(self.epoch * self.n + self.pos + k, self.n)


@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int, tag: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, 2, tag, epoch]).permutation(n)


@functools.lru_cache(maxsize=8)
def _synthetic(n: int, seed: int, epoch: int, share: float) -> np.ndarray:
    return np.random.default_rng([seed, 1, epoch]).random(n) < share


class CaptionStream:
    """Caption pairs, several per sequence; a pair that does not fit starts the next sequence."""

    def __init__(
        self, records: Sequence[CaptionSample], layout: PackLayout, tok: TextTokenizer, seed: int, share: float
    ):
        self.records, self.layout, self.tok, self.seed, self.share = records, layout, tok, seed, share
        self.order = Order(len(records), seed, 0)
        self.cache: dict[tuple[int, str], np.ndarray] = {}

    def _caption(self, epoch: int, idx: int) -> np.ndarray:
        rec = self.records[idx]
        if not isinstance(rec, CaptionSample):
            raise TypeError(f"caption source record {idx} is a {type(rec).__name__}, not a CaptionSample")
        style = "synthetic" if _synthetic(self.order.n, self.seed, epoch, self.share)[idx] else "alt"
        if style not in rec.captions:  # fall back to the other style, then to any caption there is
            style = next((s for s in ("synthetic", "alt", *sorted(rec.captions)) if s in rec.captions), "")
            if not style:
                raise ValueError(f"caption sample {rec.key!r} has no caption")
        ids = self.cache.get((idx, style))
        if ids is None:
            ids = self.cache[(idx, style)] = encode_text(self.tok, rec.captions[style], self.layout)
        return ids

    def take(self) -> list[tuple[int, np.ndarray]]:
        """(record index, caption ids) of the pairs of the next caption sequence."""
        pairs: list[tuple[int, np.ndarray]] = []

        def lengths() -> Iterator[int]:
            for k in range(self.layout.max_images):
                epoch, idx = self.order.peek(k)
                pairs.append((idx, self._caption(epoch, idx)))
                yield len(pairs[-1][1])

        n = captions_that_fit(self.layout, lengths())
        self.order.advance(n)
        return pairs[:n]

    def cursor(self) -> dict[str, int]:
        return {"epoch": self.order.epoch, "pos": self.order.pos}

    def set_cursor(self, cursor: dict[str, int]) -> None:
        self.order.epoch, self.order.pos = int(cursor["epoch"]), int(cursor["pos"])

    def build(self, pairs: list[tuple[int, np.ndarray]]) -> PackedSequence:
        return caption_sequence(self.layout, [(self.records[i].image, ids) for i, ids in pairs])


class InterleavedStream:
    """Whole documents back to back, several per sequence; a document that does not fit starts the
    next sequence, and one longer than a sequence is cut (its rest is dropped)."""

    def __init__(self, records: Sequence[InterleavedDoc], layout: PackLayout, tok: TextTokenizer, seed: int):
        self.records, self.layout, self.tok = records, layout, tok
        self.order = Order(len(records), seed, 1)
        self.cache: dict[int, list[Segment]] = {}

    def _segments(self, idx: int) -> list[Segment]:
        segments = self.cache.get(idx)
        if segments is None:
            doc = self.records[idx]
            if not isinstance(doc, InterleavedDoc):
                raise TypeError(f"interleaved source record {idx} is a {type(doc).__name__}, not an InterleavedDoc")
            segments = self.cache[idx] = [
                im if t is None else encode_text(self.tok, t, self.layout)
                for t, im in zip(doc.texts, doc.images, strict=True)
            ]
        return segments

    def take(self) -> list[int]:
        """Record indices of the documents of the next interleaved sequence, in order."""
        docs: list[int] = []

        def sizes() -> Iterator[tuple[int, int]]:
            for k in itertools.count():  # ends: every document takes at least its <eos>
                docs.append(self.order.peek(k)[1])
                yield document_size(self.layout, self._segments(docs[-1]))

        n = documents_that_fit(self.layout, sizes())
        self.order.advance(n)
        return docs[:n]

    def cursor(self) -> dict[str, int]:
        return {"epoch": self.order.epoch, "pos": self.order.pos}

    def set_cursor(self, cursor: dict[str, int]) -> None:
        self.order.epoch, self.order.pos = int(cursor["epoch"]), int(cursor["pos"])

    def build(self, docs: list[int]) -> PackedSequence:
        return interleaved_sequence(self.layout, [self._segments(idx) for idx in docs])


class TextStream:
    """One continuous stream ``doc <eos> doc <eos> ...`` cut into sequences; nothing is dropped."""

    def __init__(self, records: Sequence[TextDoc], layout: PackLayout, tok: TextTokenizer, seed: int):
        self.records, self.layout, self.tok = records, layout, tok
        self.order = Order(len(records), seed, 2)
        self.offset = 0  # tokens of the current document already used
        self.cache: dict[int, np.ndarray] = {}

    def _doc(self, idx: int) -> np.ndarray:
        ids = self.cache.get(idx)
        if ids is None:
            rec = self.records[idx]
            if not isinstance(rec, TextDoc):
                raise TypeError(f"text source record {idx} is a {type(rec).__name__}, not a TextDoc")
            eos = np.array([self.layout.eos_id], dtype=np.int32)
            ids = self.cache[idx] = np.concatenate([encode_text(self.tok, rec.text, self.layout), eos])
        return ids

    def take(self) -> list[np.ndarray]:
        """The next seq_length token runs of the stream (views into the cached documents)."""
        pieces, need = [], self.layout.budget - 1  # after <bos>
        while need:
            doc = self._doc(self.order.peek()[1])
            piece = doc[self.offset : self.offset + need]
            pieces.append(piece)
            need -= len(piece)
            self.offset += len(piece)
            if self.offset == len(doc):
                self.order.advance()
                self.offset = 0
        return pieces

    def cursor(self) -> dict[str, int]:
        return {"epoch": self.order.epoch, "pos": self.order.pos, "offset": self.offset}

    def set_cursor(self, cursor: dict[str, int]) -> None:
        self.order.epoch, self.order.pos = int(cursor["epoch"]), int(cursor["pos"])
        self.offset = int(cursor["offset"])

    def build(self, pieces: list[np.ndarray]) -> PackedSequence:
        return text_sequence(self.layout, pieces)


Stream = CaptionStream | InterleavedStream | TextStream
