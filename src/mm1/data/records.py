"""The record types every data source is read into, whatever its file format.

The synthetic world produces these records, the format writers write them as real datasets
(webdataset, OBELICS parquet, jsonl, COCO, VQAv2, LLaVA), the readers and the acquisition stage
read them back, and the mixture sampler consumes them. Images are always encoded bytes (PNG or
JPEG as found); decoding and resizing happen at load time, at the encoder's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CaptionSample:
    """An image-caption pair (webdataset shard member group ``key.png`` + ``key.<style>.txt``)."""

    key: str
    image: bytes
    captions: dict[str, str]
    """Caption per style: "alt" (web-like alt-text: short, partial, sometimes wrong) and/or
    "synthetic" (VeCap-like dense caption: complete and correct)."""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InterleavedDoc:
    """An interleaved image-text document in OBELICS layout: parallel lists, one item per position,
    exactly one of ``texts[i]`` / ``images[i]`` set."""

    id: str
    texts: tuple[str | None, ...]
    images: tuple[bytes | None, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.images):
            raise ValueError(f"document {self.id}: {len(self.texts)} texts vs {len(self.images)} images")
        for i, (t, im) in enumerate(zip(self.texts, self.images, strict=True)):
            if (t is None) == (im is None):
                raise ValueError(f"document {self.id}: position {i} must hold exactly one of text or image")


@dataclass(frozen=True)
class TextDoc:
    """A text-only document (jsonl line ``{"id", "text"}``)."""

    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CaptionBenchmark:
    """A captioning benchmark split in COCO caption format: images and their reference captions."""

    name: str
    split: str
    images: dict[int, bytes]
    """image_id -> encoded image."""
    references: dict[int, list[str]]
    """image_id -> reference captions (COCO: 5 per image)."""


@dataclass(frozen=True)
class VQAItem:
    question_id: int
    image_id: int
    question: str
    answers: tuple[str, ...]
    """The human answers (VQAv2: 10); "unanswerable" where the image does not allow an answer."""
    answer_type: str = "other"
    """VQAv2's answer_type: "yes/no", "number" or "other"."""
    question_type: str = ""


@dataclass(frozen=True)
class VQABenchmark:
    """A VQA benchmark split in VQAv2 format (questions JSON + annotations JSON + images)."""

    name: str
    split: str
    images: dict[int, bytes]
    items: list[VQAItem]


@dataclass(frozen=True)
class Conversation:
    """An SFT example in LLaVA format: turns alternate "human" / "gpt"; the first human turn
    holds ``<image>`` where the image goes (if any)."""

    id: str
    image: bytes | None
    turns: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class MultipleChoice:
    """A multiple-choice item (MMBench/SEED/ScienceQA-like)."""

    id: str
    image: bytes | None
    question: str
    choices: tuple[str, ...]
    answer: int
    """Index of the correct choice."""


@dataclass(frozen=True)
class TextTask:
    """A text-only evaluation item for the TextCore analogue: the prompt's continuation is one of
    ``choices`` (scored by likelihood); ``answer`` is the right one."""

    id: str
    task: str
    prompt: str
    answer: str
    choices: tuple[str, ...] = ()
