"""The BPE tokenizer and how an image + caption become one training sequence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mm1.config import TokenizerConfig
from mm1.data.sequence import caption_sequence, prompt_ids
from mm1.data.tokenizer import SPECIALS, TextTokenizer, train_tokenizer

CAPTIONS = [
    "a red circle above a blue square",
    "a small green triangle on the left",
    "two blue squares next to a red circle",
    "a large yellow circle in the middle",
    "a green square below a small red triangle",
] * 4


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    path = train_tokenizer(
        TokenizerConfig(vocab_size=300, min_frequency=2), CAPTIONS, tmp_path_factory.mktemp("tok") / "tokenizer.json"
    )
    return TextTokenizer(path)


# --- tokenizer ----------------------------------------------------------------------------------


def test_special_ids_are_distinct_and_in_the_vocabulary(tok: TextTokenizer) -> None:
    ids = [tok.pad_id, tok.bos_id, tok.eos_id, tok.image_id, tok.eoc_id]
    assert len(set(ids)) == len(SPECIALS)
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_vocabulary_respects_the_configured_size(tok: TextTokenizer) -> None:
    assert tok.vocab_size <= 300
    assert tok.vocab_size > 256 + len(SPECIALS)  # the byte alphabet plus some merges were learnt


def test_merges_make_frequent_words_short(tok: TextTokenizer) -> None:
    text = "a red circle above a blue square"
    assert len(tok.encode(text)) < len(text.encode())


@pytest.mark.parametrize("text", [CAPTIONS[0], "circle square triangle", "unseen: café ✓ 42!"])
def test_encode_decode_round_trip(tok: TextTokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == text


def test_encoding_adds_no_special_tokens(tok: TextTokenizer) -> None:
    specials = {tok.pad_id, tok.bos_id, tok.eos_id, tok.image_id, tok.eoc_id}
    assert not specials & set(tok.encode(CAPTIONS[1]))


def test_decode_drops_special_tokens(tok: TextTokenizer) -> None:
    ids = [tok.bos_id, tok.image_id, *tok.encode("a red circle"), tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "a red circle"


def test_training_is_deterministic(tmp_path: Path, tok: TextTokenizer) -> None:
    again = train_tokenizer(TokenizerConfig(vocab_size=300, min_frequency=2), CAPTIONS, tmp_path / "t.json")
    assert again.read_text() == tok.path.read_text()


def test_missing_tokenizer_file_names_the_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer stage"):
        TextTokenizer(tmp_path / "tokenizer.json")


def test_tokenizer_without_special_tokens_is_rejected(tmp_path: Path, tok: TextTokenizer) -> None:
    data = json.loads(tok.path.read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<image>"]
    data["model"]["vocab"].pop("<image>")
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="<image>"):
        TextTokenizer(path)


# --- sequences ----------------------------------------------------------------------------------


def test_prompt_ids_layout(tok: TextTokenizer) -> None:
    assert prompt_ids(tok, 3) == [tok.bos_id, tok.image_id, tok.image_id, tok.image_id]
    prompt = "a photo of"
    assert prompt_ids(tok, 2, prompt) == [tok.bos_id, tok.image_id, tok.image_id, *tok.encode(prompt)]


@pytest.mark.parametrize("prompt", ["", "a photo of"])
def test_caption_sequence_layout_labels_and_loss_mask(tok: TextTokenizer, prompt: str) -> None:
    n_img, seq_length = 4, 40
    caption = CAPTIONS[2]
    seq = caption_sequence(tok, caption, n_img, seq_length, prompt)
    head = prompt_ids(tok, n_img, prompt)
    body = tok.encode(caption)
    full = head + body + [tok.eos_id]

    assert seq.tokens.shape == seq.labels.shape == seq.loss_mask.shape == (seq_length,)
    assert seq.tokens.dtype == seq.labels.dtype == torch.long
    assert not seq.truncated
    # the tokens are the full sequence, then padding
    assert seq.tokens[: len(full)].tolist() == full
    assert set(seq.tokens[len(full) :].tolist()) == {tok.pad_id}
    # labels are the tokens shifted by one
    assert seq.labels[:-1].tolist() == seq.tokens[1:].tolist()
    assert seq.labels[len(full) - 2].item() == tok.eos_id
    # loss exactly where the label is a caption token or <eos>
    on = seq.loss_mask.bool()
    assert seq.labels[on].tolist() == body + [tok.eos_id]
    assert on.nonzero().flatten().tolist() == list(range(len(head) - 1, len(full) - 1))
    off = seq.labels[~on].tolist()
    assert tok.image_id not in seq.labels[on].tolist()
    assert tok.pad_id in off and tok.image_id in off


def test_loss_mask_is_off_for_prompt_tokens(tok: TextTokenizer) -> None:
    prompt = "a photo of"
    seq = caption_sequence(tok, "red", 2, 32, prompt)
    with_prompt = int(seq.loss_mask.sum())
    without = int(caption_sequence(tok, "red", 2, 32).loss_mask.sum())
    assert with_prompt == without == len(tok.encode("red")) + 1


def test_caption_is_stripped(tok: TextTokenizer) -> None:
    a = caption_sequence(tok, "  a red circle \n", 2, 32)
    b = caption_sequence(tok, "a red circle", 2, 32)
    assert torch.equal(a.tokens, b.tokens)


def test_sequence_exactly_filling_the_window_is_not_truncated(tok: TextTokenizer) -> None:
    caption = CAPTIONS[0]
    n_img = 3
    length = 1 + n_img + len(tok.encode(caption)) + 1  # <bos> images caption <eos>
    seq = caption_sequence(tok, caption, n_img, length - 1)
    assert not seq.truncated
    assert seq.labels[-1].item() == tok.eos_id
    assert tok.pad_id not in seq.tokens.tolist()


def test_too_long_caption_is_truncated_and_flagged(tok: TextTokenizer) -> None:
    caption = " ".join(CAPTIONS[:3])
    n_img, seq_length = 4, 12
    seq = caption_sequence(tok, caption, n_img, seq_length)
    assert seq.truncated
    assert seq.tokens.shape == (seq_length,)
    full = prompt_ids(tok, n_img) + tok.encode(caption)
    assert seq.tokens.tolist() == full[:seq_length]
    assert seq.labels.tolist() == full[1 : seq_length + 1]
    assert tok.eos_id not in seq.labels.tolist()
    assert tok.pad_id not in seq.tokens.tolist()
    # every label after the image slots is a caption token, and all of them carry loss
    assert seq.loss_mask.tolist() == [0.0] * n_img + [1.0] * (seq_length - n_img)
