"""The data stages: the world's manifest describes its files; the tokenizer stage can reuse a file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
from tokenizers import Tokenizer, models

from mm1.config import load
from mm1.data.stages import make_tokenizer, pack
from mm1.data.tokenizer import TextTokenizer
from mm1.world.export import make_world

SMALL = [
    "world.n_captions=40",
    "world.n_documents=8",
    "world.n_text=16",
    "world.n_bench_val=4",
    "world.n_bench_train=2",
    "world.n_textcore=2",
    "world.n_sft=2",
    "world.n_multiple_choice=2",
    "world.shard_size=16",
    "tokenizer.vocab_size=300",
    "train.steps=3",
    "train.warmup_steps=1",
    "train.micro_batch_size=4",
    "train.global_batch_size=4",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stages")
    make_world(load(None, SMALL).world, root / "world")
    return root


def test_world_manifest_describes_every_file(world: Path):
    manifest = pl.read_parquet(world / "world" / "manifest.parquet")
    assert set(manifest["role"]) == {"caption", "interleaved", "text", "benchmark", "sft"}
    assert manifest.filter(pl.col("role") == "caption")["samples"].sum() == 40
    assert manifest.filter(pl.col("format") == "webdataset").height == 3  # 40 pairs in shards of 16
    for row in manifest.iter_rows(named=True):
        data = (world / "world" / row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"] and len(data) == row["bytes"]
    prov = json.loads((world / "world" / "provenance.json").read_text())
    assert prov["config"]["world"]["n_captions"] == 40


def test_tokenizer_stage_reuses_a_named_file_and_checks_it(world: Path, tmp_path: Path):
    cfg = load(None, SMALL)
    manifest = world / "world" / "manifest.parquet"
    trained = make_tokenizer(cfg.tokenizer, manifest, tmp_path / "trained", cfg.data.max_bad_fraction)
    reused = make_tokenizer(
        load(None, [*SMALL, f"tokenizer.path={trained.path}"]).tokenizer, manifest, tmp_path / "reused", 0.0
    )
    assert reused.path.read_bytes() == trained.path.read_bytes()
    plain = tmp_path / "plain.json"
    Tokenizer(models.BPE()).save(str(plain))
    with pytest.raises(ValueError, match="special tokens"):
        make_tokenizer(load(None, [f"tokenizer.path={plain}"]).tokenizer, manifest, tmp_path / "bad", 0.0)
    assert not (tmp_path / "bad" / "tokenizer.json").exists()


def test_pack_writes_the_runs_sequences_and_the_realised_mixture(world: Path, tmp_path: Path):
    cfg = load(None, SMALL)
    manifest = world / "world" / "manifest.parquet"
    tok = make_tokenizer(cfg.tokenizer, manifest, tmp_path / "tok", cfg.data.max_bad_fraction)
    mixture = pack(cfg, manifest, tok.path, tmp_path / "packed")
    packed = pl.read_parquet(tmp_path / "packed" / "train.parquet")
    assert packed.height == 3 * 4 == int(mixture["sequences"].sum())
    assert (tmp_path / "packed" / "mixture.csv").is_file()
    assert pl.read_parquet(tmp_path / "packed" / "quarantine.parquet").height == 0
    assert TextTokenizer(tok.path).vocab_size <= 300


@pytest.mark.parametrize("grid", [1, 2])
def test_sft_pack_writes_sequences_with_loss_on_answers_and_split_images(world: Path, tmp_path: Path, grid: int):
    from mm1.cli import main
    from mm1.data.batches import PackedData

    cfg = load(None, SMALL)
    manifest = world / "world" / "manifest.parquet"
    tok = make_tokenizer(cfg.tokenizer, manifest, tmp_path / "tok", cfg.data.max_bad_fraction)
    settings = ["--set", f"sft.image_grid={grid}", "--set", "model.decoder.seq_length=256"]
    out = tmp_path / "sft"
    assert (
        main(["sft-pack", "--manifest", str(manifest), "--tokenizer", str(tok.path), "--out", str(out), *settings]) == 0
    )
    data = PackedData.load(out / "train.parquet", seq_length=256, image_size=cfg.model.encoder.image_size)
    batch = data.batch(range(len(data)))
    pictures = sum(len(s.images) > 0 for s in data.sequences)
    assert len(data) == 2 and pictures >= 1  # world.n_sft=2 conversations, each in its own sequence
    assert batch["images"].shape[0] == pictures * (grid * grid + 1 if grid > 1 else 1)
    assert 0 < batch["loss_mask"].sum() < (batch["tokens"] != TextTokenizer(tok.path).pad_id).sum()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stage"] == "sft_pack" and prov["config"]["sft"]["image_grid"] == grid
