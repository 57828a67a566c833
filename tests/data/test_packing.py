"""Packing records into fixed-length sequences: exact layouts, exact loss positions, and the files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mm1.config import TokenizerConfig
from mm1.data.packed_io import read_packed, read_packed_indexed, write_packed
from mm1.data.packing import (
    PackedSequence,
    PackLayout,
    caption_sequence,
    captions_that_fit,
    document_size,
    documents_that_fit,
    encode_text,
    interleaved_sequence,
    text_sequence,
)
from mm1.data.tokenizer import TextTokenizer, train_tokenizer

WORDS = ["a red circle", "a blue square", "the cat sat on the mat", "two green triangles"] * 5
N = 4  # image slots per image


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return TextTokenizer(train_tokenizer(TokenizerConfig(vocab_size=300, min_frequency=2), WORDS, path))


def _layout(tok: TextTokenizer, seq_length: int = 24, max_images: int = 4) -> PackLayout:
    return PackLayout.from_tokenizer(tok, seq_length, N, max_images)


def _ids(tok: TextTokenizer, text: str) -> np.ndarray:
    return np.asarray(tok.encode(text), dtype=np.int32)


def _expected(tok: TextTokenizer, lay: PackLayout, ids: list[int], loss: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``ids`` to seq_length + 1; ``loss`` lists the token positions whose prediction has loss."""
    tokens = np.array(ids + [tok.pad_id] * (lay.budget - len(ids)), dtype=np.int32)
    mask = np.zeros(lay.seq_length, dtype=np.uint8)
    mask[np.asarray(loss, dtype=int) - 1] = 1  # label t = token t + 1
    return tokens, mask


def _slot_runs(seq: PackedSequence, image_id: int) -> list[int]:
    """Lengths of the runs of consecutive <image> ids."""
    runs, n = [], 0
    for t in seq.tokens.tolist() + [-1]:
        if t == image_id:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


# --- captions -------------------------------------------------------------------------------------


def test_caption_pairs_layout_and_exact_loss_positions(tok: TextTokenizer) -> None:
    lay = _layout(tok)
    c1, c2 = _ids(tok, "a red circle"), _ids(tok, "a blue square")
    seq = caption_sequence(lay, [(b"i1", c1), (b"i2", c2)])
    img = [tok.image_id] * N
    ids = [tok.bos_id, *img, *c1, tok.eoc_id, *img, *c2, tok.eoc_id]
    first = 1 + N  # first caption token
    second = first + len(c1) + 1 + N
    loss = [*range(first, first + len(c1) + 1), *range(second, second + len(c2) + 1)]  # captions and <eoc>
    tokens, mask = _expected(tok, lay, ids, loss)
    np.testing.assert_array_equal(seq.tokens, tokens)
    np.testing.assert_array_equal(seq.loss_mask, mask)
    assert seq.images == [b"i1", b"i2"] and seq.source == "caption"
    assert seq.tokens.dtype == np.int32 and seq.loss_mask.dtype == np.uint8
    assert seq.tokens.shape == (25,) and seq.loss_mask.shape == (24,)


def test_captions_fill_until_the_next_pair_does_not_fit(tok: TextTokenizer) -> None:
    lay = _layout(tok, seq_length=24, max_images=16)  # budget 25: <bos> + pairs of N + len + 1
    assert captions_that_fit(lay, [3, 3, 3, 1]) == 3  # 1 + 8 + 8 + 8 = 25: fills the sequence exactly
    assert captions_that_fit(lay, [3, 3, 4, 1]) == 2  # 17 + 9 = 26 > 25: the third pair starts the next one
    assert captions_that_fit(lay, [3, 3, 2, 1]) == 3  # 17 + 7 = 24, + 6 = 30 > 25
    assert captions_that_fit(lay, [40, 1]) == 1  # an overlong pair still makes a sequence on its own


def test_captions_respect_max_images(tok: TextTokenizer) -> None:
    lay = _layout(tok, seq_length=200, max_images=3)
    assert captions_that_fit(lay, [1] * 20) == 3
    with pytest.raises(ValueError, match="1..3 pairs"):
        caption_sequence(lay, [(b"x", _ids(tok, "a"))] * 4)


def test_an_overlong_caption_keeps_its_image_and_is_cut(tok: TextTokenizer) -> None:
    lay = _layout(tok, seq_length=12)
    cap = _ids(tok, "the cat sat on the mat " * 4)
    seq = caption_sequence(lay, [(b"i", cap)])
    np.testing.assert_array_equal(seq.tokens, [tok.bos_id, *[tok.image_id] * N, *cap[: lay.budget - 1 - N]])
    assert tok.eoc_id not in seq.tokens  # the caption did not end
    assert seq.loss_mask[N:].all() and not seq.loss_mask[:N].any()


# --- interleaved ----------------------------------------------------------------------------------


def test_interleaved_layout_and_exact_loss_positions(tok: TextTokenizer) -> None:
    lay = _layout(tok, seq_length=40)
    t1, t2 = _ids(tok, "the cat"), _ids(tok, "sat on the mat")
    seq = interleaved_sequence(lay, [[t1, b"im1", t2, b"im2"]])
    img = [tok.image_id] * N
    ids = [tok.bos_id, *t1, *img, *t2, *img, tok.eos_id]
    a = 1 + len(t1) + N  # first token of t2
    loss = [*range(1, 1 + len(t1)), *range(a, a + len(t2)), len(ids) - 1]  # t1, t2, <eos>
    tokens, mask = _expected(tok, lay, ids, loss)
    np.testing.assert_array_equal(seq.tokens, tokens)
    np.testing.assert_array_equal(seq.loss_mask, mask)
    assert seq.images == [b"im1", b"im2"] and seq.source == "interleaved"


def test_interleaved_drops_images_past_the_maximum(tok: TextTokenizer) -> None:
    lay = _layout(tok, seq_length=60, max_images=2)
    t = _ids(tok, "a red circle")
    seq = interleaved_sequence(lay, [[b"1", t, b"2", t, b"3", t, b"4"]])
    assert seq.images == [b"1", b"2"]
    assert int((seq.tokens == tok.image_id).sum()) == 2 * N
    assert int((seq.tokens != tok.pad_id).sum()) == 1 + 2 * N + 3 * len(t) + 1  # all text is kept, and <eos>


def test_interleaved_cut_never_splits_an_image(tok: TextTokenizer) -> None:
    lay = _layout(tok, seq_length=12)  # budget 13
    t = _ids(tok, "a")  # one token
    seq = interleaved_sequence(lay, [[t, t, t, t, t, t, t, t, t, b"x", t]])  # image would take tokens 10..13 of 0..12
    assert seq.images == [] and tok.image_id not in seq.tokens
    assert tok.eos_id not in seq.tokens  # the document did not end here
    assert int((seq.tokens != tok.pad_id).sum()) == 10


@pytest.mark.parametrize("seq_length", range(6, 30))
def test_image_slots_are_whole_and_match_the_images(tok: TextTokenizer, seq_length: int) -> None:
    rng = np.random.default_rng(seq_length)
    lay = _layout(tok, seq_length=seq_length, max_images=3)
    for _ in range(20):
        segs: list[np.ndarray | bytes] = [
            bytes([i]) if rng.random() < 0.4 else rng.integers(10, 200, rng.integers(1, 6)).astype(np.int32)
            for i in range(rng.integers(1, 10))
        ]
        seq = interleaved_sequence(lay, [segs])
        runs = _slot_runs(seq, tok.image_id)  # adjacent images make one run of k * N
        assert all(r % N == 0 for r in runs) and sum(runs) == N * len(seq.images)
        assert int((seq.tokens[:-1] == tok.image_id).sum()) == N * len(seq.images)  # all slots are inputs
        assert len(seq.images) <= 3
        label = seq.tokens[1:]
        assert not seq.loss_mask[label == tok.image_id].any()


def test_image_slots_never_take_the_label_only_position(tok: TextTokenizer) -> None:
    lay = _layout(tok, seq_length=12)  # 13 tokens: a third image would end on token 12, a label only
    seq = interleaved_sequence(lay, [[b"1", b"2", b"3", b"4"]])
    assert seq.images == [b"1", b"2"]
    assert int((seq.tokens[:-1] == tok.image_id).sum()) == 2 * N
    assert not seq.loss_mask.any()  # nothing to learn: images only (the document is cut, no <eos>)
    t = _ids(tok, "a")
    seq = interleaved_sequence(lay, [[t] * 7 + [b"x"]])  # slots 8..11 are inputs; <eos> is token 12
    assert seq.images == [b"x"] and seq.tokens[8:12].tolist() == [tok.image_id] * N and seq.tokens[-1] == tok.eos_id


def test_documents_go_back_to_back_with_exact_loss_positions(tok: TextTokenizer) -> None:
    lay = _layout(tok, seq_length=40)
    t1, t2 = _ids(tok, "the cat"), _ids(tok, "sat on the mat")
    seq = interleaved_sequence(lay, [[t1, b"im1"], [b"im2", t2]])
    img = [tok.image_id] * N
    ids = [tok.bos_id, *t1, *img, tok.eos_id, *img, *t2, tok.eos_id]
    eos1 = 1 + len(t1) + N
    b = eos1 + 1 + N  # first token of t2
    loss = [*range(1, 1 + len(t1)), eos1, *range(b, b + len(t2)), len(ids) - 1]  # no <bos>, slots or <pad>
    tokens, mask = _expected(tok, lay, ids, loss)
    np.testing.assert_array_equal(seq.tokens, tokens)
    np.testing.assert_array_equal(seq.loss_mask, mask)
    assert seq.images == [b"im1", b"im2"] and int((seq.tokens == tok.bos_id).sum()) == 1


def test_documents_fill_until_the_next_does_not_fit(tok: TextTokenizer) -> None:
    lay = _layout(tok, seq_length=24, max_images=4)  # budget 25: <bos> + documents of (tokens, images)
    assert documents_that_fit(lay, [(8, 1), (8, 1), (8, 1), (1, 0)]) == 3  # 1 + 24 = 25: exactly full
    assert documents_that_fit(lay, [(8, 1), (8, 1), (9, 1), (1, 0)]) == 2  # 26 > 25: the third starts the next
    assert documents_that_fit(lay, [(5, 1)] * 4 + [(5, 1)]) == 4  # 21 tokens, but a fifth image is too many
    assert documents_that_fit(lay, [(5, 1)] * 4 + [(2, 0)]) == 5  # ... while a text-only document still fits
    assert documents_that_fit(lay, [(40, 1), (1, 0)]) == 1  # an overlong first document is cut and fills it
    # a first document with 6 images keeps 4 (22 - 2 * 4 = 14 tokens): room for text, not for an image
    assert documents_that_fit(lay, [(22, 6), (5, 1), (5, 0)]) == 1
    assert documents_that_fit(lay, [(22, 6), (5, 0)]) == 2


def test_documents_that_fit_reads_no_further_than_the_first_that_does_not(tok: TextTokenizer) -> None:
    lay = _layout(tok, seq_length=24)
    seen: list[int] = []

    def sizes():
        for k in range(100):
            seen.append(k)
            yield (8, 1)

    assert documents_that_fit(lay, sizes()) == 3 and seen == [0, 1, 2, 3]


@pytest.mark.parametrize("seq_length", range(8, 40, 3))
def test_the_documents_that_fit_make_one_sequence(tok: TextTokenizer, seq_length: int) -> None:
    rng = np.random.default_rng(seq_length)
    lay = _layout(tok, seq_length=seq_length, max_images=3)
    for _ in range(30):
        docs = [
            [
                bytes([d, i]) if rng.random() < 0.3 else rng.integers(10, 200, rng.integers(1, 5)).astype(np.int32)
                for i in range(rng.integers(1, 5))
            ]
            for d in range(8)
        ]
        n = documents_that_fit(lay, [document_size(lay, d) for d in docs])
        seq = interleaved_sequence(lay, docs[:n])
        if n > 1 or tok.eos_id in seq.tokens:  # no document was cut: each one is whole and ends in <eos>
            assert int((seq.tokens == tok.eos_id).sum()) == n
            assert seq.images == [s for d in docs[:n] for s in d if isinstance(s, bytes)][: lay.max_images]
        assert int((seq.tokens[:-1] == tok.image_id).sum()) == N * len(seq.images) and len(seq.images) <= 3
        assert not seq.loss_mask[seq.tokens[1:] == tok.image_id].any()
        if n < len(docs):
            with pytest.raises(ValueError, match="document"):
                interleaved_sequence(lay, docs[: n + 1])  # one more never fits


def test_a_document_that_does_not_fit_whole_is_refused(tok: TextTokenizer) -> None:
    lay = _layout(tok, seq_length=20, max_images=2)
    t = _ids(tok, "a")
    with pytest.raises(ValueError, match="document 1 needs 10 tokens and 1 images"):
        interleaved_sequence(lay, [[t] * 10, [t] * 5 + [b"x"]])  # 12 used + 10 > 21
    with pytest.raises(ValueError, match="document 1 needs .* 2 images but .* 1 images left"):
        interleaved_sequence(lay, [[b"1"], [b"2", b"3"]])
    with pytest.raises(ValueError, match="document 0 fills the sequence; 1 more"):
        interleaved_sequence(lay, [[t] * 30, [t]])
    with pytest.raises(ValueError, match="at least one document"):
        interleaved_sequence(lay, [])


# --- text -----------------------------------------------------------------------------------------


def test_text_sequence_layout_and_loss(tok: TextTokenizer) -> None:
    lay = _layout(tok, seq_length=30)
    d1, d2 = _ids(tok, "the cat sat"), _ids(tok, "a red")
    eos = np.array([tok.eos_id], dtype=np.int32)
    seq = text_sequence(lay, [np.concatenate([d1, eos]), np.concatenate([d2, eos])])
    ids = [tok.bos_id, *d1, tok.eos_id, *d2, tok.eos_id]
    tokens, mask = _expected(tok, lay, ids, list(range(1, len(ids))))
    np.testing.assert_array_equal(seq.tokens, tokens)
    np.testing.assert_array_equal(seq.loss_mask, mask)
    with pytest.raises(ValueError, match="exceed"):
        text_sequence(lay, [np.zeros(31, np.int32)])


def test_literal_special_tokens_in_text_stay_text(tok: TextTokenizer) -> None:
    lay = _layout(tok)
    ids = encode_text(tok, "a red <image> circle <eos><pad>", lay)
    assert ids.dtype == np.int32
    assert not np.isin(ids, lay.specials).any()  # never an image slot without an image
    assert tok.decode(ids.tolist()) == "a red <image> circle <eos><pad>"


def test_layout_without_room_for_an_image_is_rejected(tok: TextTokenizer) -> None:
    with pytest.raises(ValueError, match="seq_length"):
        PackLayout.from_tokenizer(tok, 5, 4, 16)


def test_packed_sequence_checks_its_arrays() -> None:
    with pytest.raises(ValueError, match="int32"):
        PackedSequence(np.zeros(5, np.int64), np.zeros(4, np.uint8), [], "text")
    with pytest.raises(ValueError, match="len\\(tokens\\) - 1"):
        PackedSequence(np.zeros(5, np.int32), np.zeros(5, np.uint8), [], "text")
    with pytest.raises(ValueError, match="source"):
        PackedSequence(np.zeros(5, np.int32), np.zeros(4, np.uint8), [], "video")


# --- on disk --------------------------------------------------------------------------------------


def _some(tok: TextTokenizer) -> list[PackedSequence]:
    lay = _layout(tok)
    t = _ids(tok, "a red circle")
    return [
        caption_sequence(lay, [(b"\x89PNG1", t), (b"\x00\x01", t)]),
        interleaved_sequence(lay, [[t, b"img"]]),
        text_sequence(lay, [t]),
    ]


def test_packed_parquet_round_trip(tmp_path: Path, tok: TextTokenizer) -> None:
    seqs = _some(tok)
    path = write_packed(seqs, tmp_path / "sub" / "packed.parquet", indices=[4, 7, 10])
    assert read_packed(path) == seqs
    assert [i for i, _ in read_packed_indexed(path)] == [4, 7, 10]
    df = pl.read_parquet(path)
    assert df.schema == {
        "index": pl.Int64,
        "source": pl.String,
        "tokens": pl.List(pl.Int32),
        "loss_mask": pl.List(pl.UInt8),
        "images": pl.List(pl.Binary),
    }
    assert [p.name for p in path.parent.iterdir()] == ["packed.parquet"]  # no temporary left behind
    assert read_packed(write_packed([], tmp_path / "empty.parquet")) == []


def test_missing_or_malformed_packed_files_name_the_file(tmp_path: Path, tok: TextTokenizer) -> None:
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        read_packed(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="bad.parquet"):
        read_packed(bad)
    other = tmp_path / "other.parquet"
    pl.DataFrame({"index": [0], "tokens": [[1, 2]]}).write_parquet(other)
    with pytest.raises(ValueError, match="other.parquet.*columns"):
        read_packed(other)
    ragged = tmp_path / "ragged.parquet"
    write_packed(_some(tok), ragged)
    df = pl.read_parquet(ragged).with_columns(loss_mask=pl.col("loss_mask").list.head(3))
    df.write_parquet(ragged)
    with pytest.raises(ValueError, match="ragged.parquet, row index 0"):
        read_packed(ragged)
    with pytest.raises(ValueError, match="one sequence length"):
        write_packed([_some(tok)[0], text_sequence(_layout(tok, seq_length=30), [])], tmp_path / "mixed.parquet")
