"""SFT sequences: loss on the answers only, image slots per crop, turn-boundary truncation, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from mm1.config import TokenizerConfig, WorldConfig
from mm1.config.sft import SFTConfig
from mm1.data.batches import PackedData
from mm1.data.image_split import encode_png
from mm1.data.packed_io import read_packed
from mm1.data.packing import PackedSequence
from mm1.data.quarantine import Quarantine
from mm1.data.records import Conversation
from mm1.data.sft import build_sft, conversation_sequence, load_conversations, sft_layout, sft_sequences
from mm1.data.tokenizer import TextTokenizer, train_tokenizer
from mm1.world.export import make_world

N = 4  # image slots per image
CORPUS = ["User: what colour is the circle? Assistant: the circle is red.", "How many shapes are there? two"] * 5


def _png(seed: int, side: int = 24) -> bytes:
    return encode_png(Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)))


def _conv(i: int, exchanges: int = 1, image: bool = True) -> Conversation:
    turns: list[tuple[str, str]] = []
    for j in range(exchanges):
        turns += [("human", f"what colour is shape {i}.{j}?"), ("gpt", f"the circle is red {j}")]
    if image:
        turns[0] = ("human", "<image>\n" + turns[0][1])
    return Conversation(f"c{i}", _png(i) if image else None, tuple(turns))


CONVS = [_conv(i, exchanges=1 + i % 3, image=i % 4 != 3) for i in range(12)]


TINY_WORLD = WorldConfig(  # at most 3 objects: a "describe" answer of a 6-object scene outgrows 256 tokens
    max_objects=3,
    n_captions=4,
    n_documents=1,
    n_text=2,
    n_bench_val=1,
    n_bench_train=0,
    n_textcore=1,
    n_sft=12,
    n_multiple_choice=1,
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return TextTokenizer(train_tokenizer(TokenizerConfig(vocab_size=300, min_frequency=2), CORPUS, path))


def _seqs(tok: TextTokenizer, convs=CONVS, seq_length: int = 160, **kw) -> tuple[list[PackedSequence], object]:
    cfg = SFTConfig(**kw)
    return sft_sequences(convs, cfg, tok, sft_layout(tok, cfg, seq_length, N), image_size=8)


def _answers(tok: TextTokenizer, seq: PackedSequence) -> list[str]:
    """The label tokens with loss, split at <eos> (each answer's end), decoded."""
    picked = seq.tokens[1:][seq.loss_mask == 1].tolist()
    assert picked and picked[-1] == tok.eos_id  # every loss run ends with its <eos>
    out, cur = [], []
    for t in picked:
        if t == tok.eos_id:
            out.append(tok.decode(cur))
            cur = []
        else:
            cur.append(t)
    return out


def _slot_runs(seq: PackedSequence, image_id: int) -> list[int]:
    runs, n = [], 0
    for t in seq.tokens.tolist() + [-1]:
        if t == image_id:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def test_exact_layout_of_one_exchange(tok: TextTokenizer) -> None:
    cfg = SFTConfig()
    layout = sft_layout(tok, cfg, 48, N)
    conv = Conversation("x", _png(0), (("human", "<image>\nwhat colour?"), ("gpt", "red")))
    seq, cut = conversation_sequence(conv, cfg, tok, layout, image_size=8)
    head = [tok.bos_id, *tok.encode("User:"), *[tok.image_id] * N, *tok.encode("what colour?\nAssistant:")]
    answer = [*tok.encode("red"), tok.eos_id]
    ids = head + answer
    np.testing.assert_array_equal(seq.tokens, np.array(ids + [tok.pad_id] * (49 - len(ids)), dtype=np.int32))
    expected = np.zeros(48, dtype=np.uint8)
    expected[len(head) - 1 : len(ids) - 1] = 1  # label t = token t + 1
    np.testing.assert_array_equal(seq.loss_mask, expected)
    assert not cut and seq.images == [conv.image] and seq.source == "interleaved"


def test_loss_covers_exactly_the_answers(tok: TextTokenizer) -> None:
    seqs, stats = _seqs(tok, system_prompt="You are a helpful assistant.")
    assert stats.truncated == stats.dropped == 0 and len(seqs) == len(CONVS)
    by_answers = sorted(_answers(tok, s) for s in seqs)
    assert by_answers == sorted([t for role, t in c.turns if role == "gpt"] for c in CONVS)
    assert stats.answer_tokens == sum(int(s.loss_mask.sum()) for s in seqs)


@pytest.mark.parametrize("grid", [1, 2, 3])
def test_image_slots_per_crop_with_splitting(tok: TextTokenizer, grid: int) -> None:
    seqs, stats = _seqs(tok, seq_length=200, image_grid=grid)
    per_picture = grid * grid + (grid > 1)
    for seq in seqs:
        inputs = seq.tokens[:-1]
        assert int((inputs == tok.image_id).sum()) == len(seq.images) * N  # every slot is an input position
        if seq.source == "interleaved":
            assert len(seq.images) == per_picture and _slot_runs(seq, tok.image_id) == [per_picture * N]
        else:
            assert seq.images == [] and _slot_runs(seq, tok.image_id) == []
    assert stats.images == per_picture * sum(c.image is not None for c in CONVS)


def test_long_conversations_are_cut_at_a_turn_boundary_or_dropped(tok: TextTokenizer) -> None:
    long = _conv(0, exchanges=3)
    full, _ = _seqs(tok, [long], seq_length=200)
    need = int((full[0].tokens != tok.pad_id).sum())  # tokens of all 3 exchanges
    seqs, stats = _seqs(tok, [long], seq_length=need - 2)  # the last exchange no longer fits
    assert stats.truncated == 1 and stats.dropped == 0
    assert _answers(tok, seqs[0]) == [long.turns[1][1], long.turns[3][1]]  # whole answers only
    assert _slot_runs(seqs[0], tok.image_id) == [N]
    # grid 2 takes 5 x 4 = 20 slots: the picture's exchange (55 tokens) is dropped, the text one (32) stays
    seqs, stats = _seqs(tok, [_conv(1), _conv(2, image=False)], seq_length=40, image_grid=2)
    assert stats.dropped == 1 and [s.source for s in seqs] == ["text"]


def test_nothing_fits_is_an_error(tok: TextTokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="raise seq_length"):
        build_sft(
            SFTConfig(image_grid=2),
            [_conv(1)],
            tok,
            tmp_path / "x.parquet",
            seq_length=40,
            image_tokens=N,
            image_size=8,
        )


def test_order_is_seeded_and_reshuffled_per_epoch(tok: TextTokenizer) -> None:
    a, _ = _seqs(tok, epochs=2, seed=3)
    b, stats = _seqs(tok, epochs=2, seed=3)
    c, _ = _seqs(tok, epochs=2, seed=4)
    assert a == b and a != c and stats.sequences == 2 * len(CONVS)
    first, second = a[: len(CONVS)], a[len(CONVS) :]
    key = lambda s: s.tokens.tobytes()  # noqa: E731
    assert sorted(first, key=key) == sorted(second, key=key) and first != second


def test_write_read_and_batch(tok: TextTokenizer, tmp_path: Path) -> None:
    path, cfg = tmp_path / "sft.parquet", SFTConfig(image_grid=2, seed=1)
    stats = build_sft(cfg, CONVS, tok, path, seq_length=160, image_tokens=N, image_size=8)
    seqs = read_packed(path)
    assert seqs == sft_sequences(CONVS, cfg, tok, sft_layout(tok, cfg, 160, N), 8)[0] and len(seqs) == stats.sequences
    data = PackedData.load(path, seq_length=160, image_size=8)
    idx = np.arange(4)
    batch = data.batch(idx)
    assert batch["tokens"].shape == batch["labels"].shape == batch["loss_mask"].shape == (4, 160)
    n_images = sum(len(seqs[i].images) for i in idx)
    assert batch["images"].shape == (n_images, 3, 8, 8)
    assert int((batch["tokens"] == tok.image_id).sum()) == n_images * N
    assert bool((batch["loss_mask"][batch["labels"] == tok.image_id] == 0).all())
    assert bool((batch["loss_mask"][batch["labels"] == tok.pad_id] == 0).all())


def test_conversations_from_a_world_manifest(tok: TextTokenizer, tmp_path: Path) -> None:
    make_world(TINY_WORLD, tmp_path)
    quarantine = Quarantine()
    convs = load_conversations(tmp_path / "manifest.parquet", quarantine)
    assert len(convs) == 12 and len(quarantine) == 0
    seqs, stats = _seqs(tok, convs, seq_length=256)
    assert stats.sequences == 12 and stats.truncated == stats.dropped == 0
    assert sorted(_answers(tok, s) for s in seqs) == sorted([t for r, t in c.turns if r == "gpt"] for c in convs)
    assert sorted(s.images for s in seqs) == sorted([c.image] if c.image else [] for c in convs)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("user_template", "User: {question}", "exactly once"),
        ("assistant_template", "no field", "exactly once"),
        ("user_template", "{text} <image>", "may not contain"),
        ("assistant_template", "{text", "valid format"),
        ("image_grid", 0, "greater than or equal"),
    ],
)
def test_config_names_bad_values(field: str, value: object, match: str) -> None:
    with pytest.raises(ValidationError, match=match) as err:
        SFTConfig(**{field: value})
    assert field in str(err.value)


def test_picture_without_placeholder_goes_before_the_first_turn(tok: TextTokenizer) -> None:
    cfg = SFTConfig()
    conv = Conversation("x", _png(0), (("human", "what colour?"), ("gpt", "red")))
    seq, _ = conversation_sequence(conv, cfg, tok, sft_layout(tok, cfg, 48, N), image_size=8)
    assert seq.tokens[1 : 1 + N].tolist() == [tok.image_id] * N and _slot_runs(seq, tok.image_id) == [N]
