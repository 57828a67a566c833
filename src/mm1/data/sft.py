"""SFT conversations (LLaVA format) as packed training sequences, one conversation per sequence.

    <bos> system  user(human_1 with the picture's slots)  answer_1 <eos>  user(human_2)  answer_2 <eos> ... <pad>
                                                          |-- loss ---|                  |-- loss ---|

``user`` and ``answer`` are :class:`SFTConfig`'s templates around each turn's text. The picture's
``<image>`` slots go where the first human turn writes ``<image>`` (LLaVA; the whitespace around
it is dropped, the slots separate the text), or before the first turn when none says, and number
``images_per_picture(image_grid) * N``: the crops and the overview of :mod:`mm1.data.image_split`,
each ``N`` (the connector's tokens) slots long, in the order of ``PackedSequence.images``. The loss
is on exactly the answer tokens and the ``<eos>`` after each; never on the system prompt, the
human turns, the image slots or the padding.

A conversation longer than the sequence keeps its first exchanges (human + answer) that fit
whole: it is cut at a turn boundary, never inside the image's slots or an answer ("truncated").
One whose first exchange does not fit is left out ("dropped"). A trailing human turn without an
answer is ignored (nothing to learn).

The output is the pre-training packer's type and file (:func:`mm1.data.packed_io.write_packed`),
so ``PackedData`` and the trainer read it unchanged. ``source`` is "interleaved" for a
conversation with a picture (image and text) and "text" without one: the packed format knows
no other kinds. Images are encoded bytes like the packer's: without splitting the picture's own
bytes (resized at load time); with splitting PNG crops already at the SFT resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mm1.config.sft import IMAGE_PLACEHOLDER, SFTConfig
from mm1.data.formats import read_llava
from mm1.data.image_split import images_per_picture, split_image_bytes
from mm1.data.packed_io import write_packed
from mm1.data.packing import PackedSequence, PackLayout, encode_text
from mm1.data.quarantine import Quarantine
from mm1.data.records import Conversation
from mm1.data.sources import files_for
from mm1.data.tokenizer import TextTokenizer


@dataclass(frozen=True)
class SFTStats:
    """What :func:`sft_sequences` made. Per conversation: conversations, truncated, dropped; over
    every epoch (what the file holds): sequences, answer_tokens, images."""

    conversations: int
    """Conversations given."""
    sequences: int
    """Sequences written: epochs x kept conversations."""
    answer_tokens: int
    """Tokens with loss (answers and their <eos>) over all sequences."""
    images: int
    """Images over all sequences (crops and overviews each count)."""
    truncated: int
    """Conversations whose later exchanges did not fit (their first ones are kept)."""
    dropped: int
    """Conversations whose first exchange did not fit (left out)."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def load_conversations(manifest: Path, quarantine: Quarantine) -> list[Conversation]:
    """Every conversation of the manifest's "sft" files (LLaVA JSON), in manifest order."""
    out: list[Conversation] = []
    for fmt, path in files_for(manifest, "sft"):
        if fmt != "llava":
            raise ValueError(f"{manifest}: an sft source must be llava, not {fmt} ({path})")
        out.extend(read_llava(path, quarantine=quarantine))
    return out


def sft_layout(tok: TextTokenizer, cfg: SFTConfig, seq_length: int, image_tokens: int) -> PackLayout:
    """The packer's layout for SFT: ``image_tokens`` slots per crop, one picture per sequence."""
    return PackLayout.from_tokenizer(tok, seq_length, image_tokens, images_per_picture(cfg.image_grid))


def user_turn(
    human: str, cfg: SFTConfig, tok: TextTokenizer, layout: PackLayout, slots: np.ndarray | None
) -> np.ndarray:
    """A human turn through ``cfg.user_template``; with ``slots`` the picture's slots go where it
    says ``<image>`` (the whitespace around it dropped) or before it."""
    prompt = cfg.user_template.format(text=human)
    if slots is None:
        return encode_text(tok, prompt, layout)
    before, _, after = prompt.partition(IMAGE_PLACEHOLDER) if IMAGE_PLACEHOLDER in prompt else ("", "", prompt)
    return np.concatenate([encode_text(tok, before.rstrip(), layout), slots, encode_text(tok, after.lstrip(), layout)])


def _exchanges(conv: Conversation, cfg: SFTConfig, tok: TextTokenizer, layout: PackLayout) -> list[np.ndarray]:
    """Per exchange (human, answer): its token ids and, stacked below, 1 where a token has loss. (2, L)"""
    slots = np.full(layout.image_tokens * layout.max_images, layout.image_id, dtype=np.int32)
    eos = np.array([layout.eos_id], dtype=np.int32)
    out = []
    for j in range(len(conv.turns) // 2):
        (_, human), (_, answer) = conv.turns[2 * j], conv.turns[2 * j + 1]
        ask_ids = user_turn(human, cfg, tok, layout, slots if j == 0 and conv.image is not None else None)
        reply_ids = np.concatenate([encode_text(tok, cfg.assistant_template.format(text=answer), layout), eos])
        loss = np.concatenate([np.zeros(len(ask_ids), np.int32), np.ones(len(reply_ids), np.int32)])
        out.append(np.stack([np.concatenate([ask_ids, reply_ids]), loss]))
    return out


def conversation_sequence(
    conv: Conversation, cfg: SFTConfig, tok: TextTokenizer, layout: PackLayout, image_size: int
) -> tuple[PackedSequence | None, bool]:
    """(the sequence, or None when even the first exchange does not fit; whether exchanges were cut)."""
    head = [np.array([layout.bos_id], dtype=np.int32)]
    if cfg.system_prompt:
        head.append(encode_text(tok, cfg.system_prompt, layout))
    ids = np.concatenate(head)
    parts, used = [np.stack([ids, np.zeros(len(ids), np.int32)])], len(ids)
    exchanges = _exchanges(conv, cfg, tok, layout)
    for ex in exchanges:
        if used + ex.shape[1] > layout.budget:
            break
        parts.append(ex)
        used += ex.shape[1]
    kept = len(parts) - 1
    if kept == 0:
        return None, True
    ids, loss = np.concatenate(parts, axis=1)
    tokens = np.full(layout.budget, layout.pad_id, dtype=np.int32)
    tokens[:used] = ids
    mask = np.zeros(layout.budget, dtype=np.uint8)
    mask[:used] = loss
    images = [] if conv.image is None else split_image_bytes(conv.image, cfg.image_grid, image_size)
    seq = PackedSequence(tokens, mask[1:], images, "text" if conv.image is None else "interleaved")
    return seq, kept < len(exchanges)


def _order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, 3, epoch]).permutation(n)


def sft_sequences(
    conversations: Sequence[Conversation], cfg: SFTConfig, tok: TextTokenizer, layout: PackLayout, image_size: int
) -> tuple[list[PackedSequence], SFTStats]:
    """Every kept conversation once per epoch, each epoch in its own seeded order."""
    built = [conversation_sequence(conv, cfg, tok, layout, image_size) for conv in conversations]
    seqs: list[PackedSequence] = []
    for epoch in range(cfg.epochs):
        seqs += [s for i in _order(len(built), cfg.seed, epoch) if (s := built[i][0]) is not None]
    stats = SFTStats(
        conversations=len(conversations),
        sequences=len(seqs),
        answer_tokens=sum(int(s.loss_mask.sum()) for s in seqs),
        images=sum(len(s.images) for s in seqs),
        truncated=sum(1 for s, cut in built if s is not None and cut),
        dropped=sum(1 for s, _ in built if s is None),
    )
    return seqs, stats


def build_sft(
    cfg: SFTConfig,
    conversations: Sequence[Conversation],
    tokenizer: TextTokenizer,
    out_path: Path,
    *,
    seq_length: int,
    image_tokens: int,
    image_size: int,
) -> SFTStats:
    """Write the SFT sequences of ``conversations`` to ``out_path`` (a packed parquet).

    ``seq_length``, ``image_tokens`` (the connector's N) and ``image_size`` (of each crop) come
    from the model config."""
    layout = sft_layout(tokenizer, cfg, seq_length, image_tokens)
    seqs, stats = sft_sequences(conversations, cfg, tokenizer, layout, image_size)
    if not seqs:
        slots = layout.image_tokens * layout.max_images
        raise ValueError(
            f"none of the {len(conversations)} conversations fits seq_length={seq_length} (a picture takes "
            f"{slots} slots at image_grid={cfg.image_grid}); raise seq_length or lower image_grid / num_tokens"
        )
    write_packed(seqs, Path(out_path))
    return stats
