"""How pre-tokenised records become fixed-length pre-training sequences (MM1's three data types).

A sequence holds ``seq_length + 1`` tokens (inputs = tokens[:-1], labels = tokens[1:]); an image
takes ``image_tokens`` copies of ``<image>`` (the connector's N). The three layouts:

    caption      <bos> [<image>xN caption <eoc>] [<image>xN caption <eoc>] ... <pad> ...
    interleaved  <bos> [text <image>xN text ... <eos>] [<image>xN text ... <eos>] ... <pad> ...
    text         <bos> ...doc <eos> doc <eos> do                          (a continuous stream, no pad)

Several caption pairs, or several whole documents, share a sequence until the next does not fit
(in tokens or in max_images); it then starts the next sequence. A document longer than the whole
sequence is cut and its rest dropped (the text stream instead carries a document's rest into the
next sequence). Documents are separated by ``<eos>``, as text documents are; attention is not
masked between them (as in the text stream).

loss_mask[t] = 1 when the label tokens[t + 1] is a text token, ``<eoc>`` or ``<eos>``; 0 when it is
``<bos>``, an image slot or ``<pad>``. Every image slot is an input position (never the last,
label-only token), so the inputs hold exactly ``image_tokens * len(images)`` slots. The mask is derived from the token ids, so a loss on an
``<image>`` slot cannot happen by construction. Text is cleaned of special ids when it is encoded
(:func:`encode_text`), so a literal "<image>" in web text never becomes a slot without an image.

The functions here are pure: they build one sequence from pieces they are given. Which records
go into which sequence (the cursors, the epochs, the mixture) is :mod:`mm1.data.mixture`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from mm1.data.tokenizer import TextTokenizer

SOURCES = ("caption", "interleaved", "text")


@dataclass(frozen=True, eq=False)
class PackedSequence:
    """One training sequence and the images that fill its ``<image>`` slots."""

    tokens: np.ndarray  # (S + 1,) int32
    loss_mask: np.ndarray  # (S,) uint8, aligned with labels = tokens[1:]
    images: list[bytes]  # encoded images, in the order of their slots
    source: str  # "caption" | "interleaved" | "text"

    def __post_init__(self) -> None:
        if self.tokens.dtype != np.int32 or self.loss_mask.dtype != np.uint8:
            raise ValueError(
                f"tokens must be int32 and loss_mask uint8, got {self.tokens.dtype}/{self.loss_mask.dtype}"
            )
        if self.tokens.ndim != 1 or self.loss_mask.shape != (len(self.tokens) - 1,):
            raise ValueError(
                f"loss_mask must have len(tokens) - 1 entries, got {self.loss_mask.shape} for {self.tokens.shape}"
            )
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")

    @property
    def seq_length(self) -> int:
        return len(self.loss_mask)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PackedSequence):
            return NotImplemented
        return (
            self.source == other.source
            and self.images == other.images
            and np.array_equal(self.tokens, other.tokens)
            and np.array_equal(self.loss_mask, other.loss_mask)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable numpy payload


@dataclass(frozen=True)
class PackLayout:
    """Sizes and special ids every packed sequence is built with."""

    seq_length: int
    image_tokens: int
    max_images: int
    pad_id: int
    bos_id: int
    eos_id: int
    image_id: int
    eoc_id: int

    def __post_init__(self) -> None:
        if self.image_tokens < 1:
            raise ValueError(f"image_tokens must be >= 1, got {self.image_tokens}")
        if self.max_images < 1:
            raise ValueError(f"max_images_per_sequence must be >= 1, got {self.max_images}")
        if self.seq_length < self.image_tokens + 2:
            raise ValueError(
                f"seq_length {self.seq_length} leaves no room for <bos>, one image ({self.image_tokens} slots) "
                "and a caption token; raise seq_length or lower the connector's num_tokens"
            )

    @classmethod
    def from_tokenizer(cls, tok: TextTokenizer, seq_length: int, image_tokens: int, max_images: int) -> PackLayout:
        return cls(seq_length, image_tokens, max_images, tok.pad_id, tok.bos_id, tok.eos_id, tok.image_id, tok.eoc_id)

    @property
    def budget(self) -> int:
        """Tokens per sequence, the extra label included."""
        return self.seq_length + 1

    @property
    def specials(self) -> np.ndarray:
        return np.array([self.pad_id, self.bos_id, self.eos_id, self.image_id, self.eoc_id], dtype=np.int32)


def encode_text(tok: TextTokenizer, text: str, layout: PackLayout) -> np.ndarray:
    """Token ids of ``text`` (int32) without any special id. TextTokenizer already encodes a literal
    "<image>" or "<eos>" in web text as plain text; the filter guards tokenizers that do not."""
    ids = np.asarray(tok.encode(text), dtype=np.int32)
    special = np.isin(ids, layout.specials)
    return ids[~special] if special.any() else ids


def _finish(layout: PackLayout, parts: list[np.ndarray], images: list[bytes], source: str) -> PackedSequence:
    tokens = np.full(layout.budget, layout.pad_id, dtype=np.int32)
    ids = np.concatenate(parts) if parts else np.empty(0, np.int32)
    tokens[: len(ids)] = ids
    label = tokens[1:]
    mask = (label != layout.pad_id) & (label != layout.bos_id) & (label != layout.image_id)
    return PackedSequence(tokens=tokens, loss_mask=mask.astype(np.uint8), images=images, source=source)


# --- caption pairs --------------------------------------------------------------------------------


def caption_pair_length(layout: PackLayout, caption: np.ndarray) -> int:
    """Tokens one pair takes: N image slots, the caption, <eoc>."""
    return layout.image_tokens + len(caption) + 1


def captions_that_fit(layout: PackLayout, lengths: Iterable[int]) -> int:
    """How many of the next pairs (their caption lengths, in order) go into one sequence: pairs are
    added until the next one does not fit or max_images is reached; always at least one (a pair
    longer than the sequence is cut, see :func:`caption_sequence`)."""
    used, n = 1, 0  # <bos>
    for length in lengths:
        need = layout.image_tokens + length + 1
        if n == layout.max_images or (n > 0 and used + need > layout.budget):
            break
        used += need
        n += 1
    return max(n, 1)


def caption_sequence(layout: PackLayout, pairs: Sequence[tuple[bytes, np.ndarray]]) -> PackedSequence:
    """``<bos>`` then ``<image>xN caption <eoc>`` per pair. A lone pair longer than the sequence
    keeps its image and is cut inside the caption (without ``<eoc>``: the caption did not end)."""
    if not pairs or len(pairs) > layout.max_images:
        raise ValueError(f"a caption sequence takes 1..{layout.max_images} pairs, got {len(pairs)}")
    slots = np.full(layout.image_tokens, layout.image_id, dtype=np.int32)
    eoc = np.array([layout.eoc_id], dtype=np.int32)
    parts, used = [np.array([layout.bos_id], dtype=np.int32)], 1
    for _, caption in pairs:
        used += caption_pair_length(layout, caption)
        parts += [slots, caption, eoc]
    if used > layout.budget:
        if len(pairs) > 1:
            raise ValueError(f"{len(pairs)} caption pairs need {used} tokens, more than {layout.budget}")
        parts[-1] = parts[-1][:0]
        parts[-2] = parts[-2][: layout.budget - 1 - layout.image_tokens]
    return _finish(layout, parts, [image for image, _ in pairs], "caption")


# --- interleaved documents ------------------------------------------------------------------------

Segment = np.ndarray | bytes
"""A piece of an interleaved document: text token ids (int32) or an encoded image."""


def document_size(layout: PackLayout, segments: Sequence[Segment]) -> tuple[int, int]:
    """(tokens, images) a whole document takes in a sequence: its text, N slots per image, ``<eos>``."""
    images = sum(isinstance(seg, bytes) for seg in segments)
    text = sum(len(seg) for seg in segments if not isinstance(seg, bytes))
    return text + layout.image_tokens * images + 1, images


def documents_that_fit(layout: PackLayout, sizes: Iterable[tuple[int, int]]) -> int:
    """How many of the next documents (their :func:`document_size`, in order) go into one sequence.

    The first always goes in (its images past max_images dropped, cut when it is longer than the
    sequence: a cut document fills the sequence). Each next document goes in only whole, while the
    tokens and the images so far stay within the sequence's budget and max_images; the first that
    does not fit starts the next sequence, so the documents keep their order."""
    used, images, n = 1, 0, 0  # <bos>
    for tokens, imgs in sizes:
        if n == 0:
            kept = min(imgs, layout.max_images)
            tokens, imgs = tokens - layout.image_tokens * (imgs - kept), kept
        elif used + tokens > layout.budget or images + imgs > layout.max_images:
            break
        used, images, n = used + tokens, images + imgs, n + 1
        if used > layout.budget:  # the first document is cut
            break
    return max(n, 1)


def interleaved_sequence(layout: PackLayout, documents: Sequence[Sequence[Segment]]) -> PackedSequence:
    """``<bos>``, then each document's text (token arrays) and images (bytes) in order, each ended by ``<eos>``.

    The first document: images past max_images are dropped with their slots; when it is longer than
    the sequence it is cut at a token boundary, an image whose slots would not all lie in the inputs
    (tokens[:-1]) is dropped whole (the cut moves before it) and the rest of the document is
    discarded; ``<eos>`` is only written when the document ends inside the sequence. Every later
    document must fit whole (:func:`documents_that_fit` chooses them)."""
    if not documents:
        raise ValueError("an interleaved sequence takes at least one document, got none")
    parts, images, used = [np.array([layout.bos_id], dtype=np.int32)], [], 1
    eos = np.array([layout.eos_id], dtype=np.int32)
    for k, segments in enumerate(documents):
        if k:
            tokens, imgs = document_size(layout, segments)
            if used + tokens > layout.budget or len(images) + imgs > layout.max_images:
                raise ValueError(
                    f"document {k} needs {tokens} tokens and {imgs} images but the sequence has "
                    f"{layout.budget - used} tokens and {layout.max_images - len(images)} images left"
                )
        used, ended = _lay_out(layout, segments, parts, images, used)
        if ended and used < layout.budget:
            parts.append(eos)
            used += 1
        elif k < len(documents) - 1:
            raise ValueError(f"document {k} fills the sequence; {len(documents) - 1 - k} more do not fit")
    return _finish(layout, parts, images, "interleaved")


def _lay_out(
    layout: PackLayout, segments: Sequence[Segment], parts: list[np.ndarray], images: list[bytes], used: int
) -> tuple[int, bool]:
    """Append one document's text and image slots to ``parts``/``images`` from position ``used``;
    returns the new position and whether the whole document went in."""
    slots = np.full(layout.image_tokens, layout.image_id, dtype=np.int32)
    for seg in segments:
        if used == layout.budget:
            return used, False
        if isinstance(seg, bytes):
            if len(images) == layout.max_images:
                continue
            if used + layout.image_tokens > layout.seq_length:  # every slot must be an input position
                return used, False
            parts.append(slots)
            images.append(seg)
            used += layout.image_tokens
        else:
            take = seg[: layout.budget - used]
            parts.append(take)
            used += len(take)
            if len(take) < len(seg):
                return used, False
    return used, True


# --- text-only documents --------------------------------------------------------------------------


def text_sequence(layout: PackLayout, pieces: Sequence[np.ndarray]) -> PackedSequence:
    """``<bos>`` then ``pieces`` (document token runs, each ending in ``<eos>`` unless the document
    continues in the next sequence), cut at the sequence's end."""
    parts = [np.array([layout.bos_id], dtype=np.int32), *pieces]
    used = sum(len(p) for p in parts)
    if used > layout.budget:
        raise ValueError(f"text pieces of {used} tokens exceed the sequence's {layout.budget}")
    return _finish(layout, parts, [], "text")
