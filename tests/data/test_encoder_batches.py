"""Encoder pre-training batches: CLIP pairs and AIM images, step-indexed, seeded, DP-sharded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mm1.config import EncoderConfig, TokenizerConfig, WorldConfig
from mm1.data.encoder_batches import EncoderBatches, load_caption_samples
from mm1.data.image_split import encode_png
from mm1.data.images import stack_images
from mm1.data.quarantine import Quarantine
from mm1.data.records import CaptionSample
from mm1.data.tokenizer import TextTokenizer, train_tokenizer
from mm1.world.export import make_world

ALT, SYN = "a red circle", "a large red circle above two small blue squares on a white background"
T, SIZE = 12, 8


TINY_WORLD = WorldConfig(
    n_captions=6, n_documents=1, n_text=2, n_bench_val=1, n_bench_train=0, n_textcore=1, n_sft=1, n_multiple_choice=1
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return TextTokenizer(train_tokenizer(TokenizerConfig(vocab_size=300, min_frequency=2), [ALT, SYN] * 10, path))


def _png(i: int) -> bytes:
    return encode_png(Image.fromarray(np.full((16, 16, 3), i, dtype=np.uint8)))


SAMPLES = [CaptionSample(f"k{i}", _png(i), {"alt": f"{ALT} {i}", "synthetic": SYN}) for i in range(10)]


def _clip(tok: TextTokenizer, seed: int = 0, share: float = 0.5) -> EncoderBatches:
    return EncoderBatches(SAMPLES, SIZE, seed, tok, text_seq_length=T, synthetic_captions=share)


def _pixel(images: torch.Tensor) -> list[int]:
    """The record index of each image (image i is filled with value i)."""
    return [round((float(im[0, 0, 0]) + 1) * 127.5) for im in images]


def test_clip_shapes_padding_and_eoc_last(tok: TextTokenizer) -> None:
    batch = _clip(tok).global_batch(step=0, global_batch=6)
    assert set(batch) == {"images", "text", "text_lengths"}
    assert batch["images"].shape == (6, 3, SIZE, SIZE) and batch["text"].shape == (6, T)
    assert batch["text"].dtype == batch["text_lengths"].dtype == torch.long
    for row, n in zip(batch["text"], batch["text_lengths"].tolist(), strict=True):
        assert 2 <= n <= T and row[n - 1] == tok.eoc_id and (row[n:] == tok.pad_id).all()
        assert not (row[: n - 1] == tok.eoc_id).any()


def test_truncation_keeps_eoc_last(tok: TextTokenizer) -> None:
    data = _clip(tok, share=1.0)  # every pair uses the long synthetic caption
    full = tok.encode(SYN)
    assert len(full) >= T
    ids = data.caption_ids(0, 3)
    assert ids.tolist() == [*full[: T - 1], tok.eoc_id]
    assert (data.global_batch(0, 4)["text_lengths"] == T).all()


@pytest.mark.parametrize(("share", "expected"), [(0.0, {"alt"}), (1.0, {"synthetic"}), (0.5, {"alt", "synthetic"})])
def test_caption_style_is_a_seeded_draw(tok: TextTokenizer, share: float, expected: set[str]) -> None:
    data = _clip(tok, share=share)
    syn = tok.encode(SYN)[: T - 1]
    styles = {
        "synthetic" if data.caption_ids(e, i)[:-1].tolist() == syn else "alt" for e in range(3) for i in range(10)
    }
    assert styles == expected
    assert [_clip(tok, share=share).caption_ids(1, i).tolist() for i in range(10)] == [
        data.caption_ids(1, i).tolist() for i in range(10)
    ]


def test_steps_walk_a_seeded_permutation_per_epoch(tok: TextTokenizer) -> None:
    data = _clip(tok, seed=7)
    epochs, records = zip(*(data.positions(step, 5) for step in range(4)), strict=True)
    assert np.concatenate(epochs).tolist() == [0] * 10 + [1] * 10
    assert sorted(np.concatenate(records[:2])) == list(range(10)) == sorted(np.concatenate(records[2:]))
    assert not np.array_equal(np.concatenate(records[:2]), np.concatenate(records[2:]))  # reshuffled
    _, wrap = data.positions(1, 6)  # pairs 6..11: the end of epoch 0, the start of epoch 1
    assert wrap.tolist() == [*np.concatenate(records[:2])[6:], *np.concatenate(records[2:])[:2]]
    assert _pixel(data.global_batch(1, 6)["images"]) == wrap.tolist()


def test_determinism_and_seed(tok: TextTokenizer) -> None:
    a, b, c = (_clip(tok, seed=s).global_batch(3, 4) for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["images"], c["images"])


@pytest.mark.parametrize(("micro", "dp"), [(2, 2), (1, 4), (4, 1), (2, 1)])
def test_dp_shards_partition_the_global_batch(tok: TextTokenizer, micro: int, dp: int) -> None:
    data, step, g = _clip(tok, seed=5), 2, 8
    whole = data.global_batch(step, g)
    shards = [list(data.micro_batches(step, g, micro, r, dp)) for r in range(dp)]
    chunks = [shards[k % dp][k // dp] for k in range(g // micro)]  # chunk k runs on rank k % dp
    for key in whole:
        assert torch.equal(torch.cat([c[key] for c in chunks]), whole[key])


def test_bad_sharding_is_named(tok: TextTokenizer) -> None:
    with pytest.raises(ValueError, match="multiple of micro_batch"):
        next(_clip(tok).micro_batches(0, 6, 4, 0, 1))
    with pytest.raises(ValueError, match="dp_rank"):
        next(_clip(tok).micro_batches(0, 8, 2, 2, 2))


def test_aim_batches_are_images_only(tok: TextTokenizer) -> None:
    aim = EncoderBatches.for_encoder(EncoderConfig(objective="aim", image_size=SIZE), SAMPLES, seed=0, tokenizer=tok)
    batch = aim.global_batch(0, 4)
    assert set(batch) == {"images"} and batch["images"].shape == (4, 3, SIZE, SIZE)
    _, records = aim.positions(0, 4)
    assert torch.equal(batch["images"], stack_images([SAMPLES[i].image for i in records], SIZE))
    clip = EncoderBatches.for_encoder(EncoderConfig(image_size=SIZE), SAMPLES, seed=0, tokenizer=tok)
    assert clip.text_seq_length == EncoderConfig().clip.text_seq_length and "text" in clip.global_batch(0, 2)
    with pytest.raises(ValueError, match="tokenizer"):
        EncoderBatches.for_encoder(EncoderConfig(), SAMPLES, seed=0, tokenizer=None)


def test_caption_pairs_from_a_world_manifest(tok: TextTokenizer, tmp_path: Path) -> None:
    make_world(TINY_WORLD, tmp_path)
    samples = load_caption_samples(tmp_path / "manifest.parquet", Quarantine())
    assert len(samples) == 6
    batch = EncoderBatches(samples, SIZE, 0, tok, T).global_batch(0, 6)
    assert batch["images"].shape == (6, 3, SIZE, SIZE) and (batch["text_lengths"] >= 2).all()
