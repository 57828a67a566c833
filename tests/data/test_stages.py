"""The data stages: the world's manifest describes its files; the tokenizer stage can reuse a file;
the pack stage writes the sampler's stream and its realised mixture, in memory flat in their number."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
from tokenizers import Tokenizer, models

from mm1.config import load
from mm1.data.mixture import MixtureSampler, realised_mixture
from mm1.data.packed_io import BLOCK_ROWS_KEY, read_packed
from mm1.data.quarantine import Quarantine
from mm1.data.sources import load_pretraining_sources
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
    (shard,) = (tmp_path / "packed" / "train.parquet").iterdir()  # a sharded set: 3 blocks fill one shard
    assert shard.name == "part-00000-of-00001.parquet"
    assert pl.read_parquet_metadata(shard)[BLOCK_ROWS_KEY] == "4"  # a micro-batch
    sampler = MixtureSampler(
        load_pretraining_sources(manifest, Quarantine()),
        cfg.data.mixture,
        tok,
        seq_length=cfg.model.decoder.seq_length,
        image_tokens=cfg.model.connector.num_tokens,
        seed=cfg.train.seed,
    )
    seqs = read_packed(tmp_path / "packed" / "train.parquet")
    assert seqs == list(itertools.islice(sampler, 12))  # the sampler's stream, in order
    expected = realised_mixture(seqs, tok.pad_id, cfg.data.mixture)  # counted over the whole list at once
    assert (tmp_path / "packed" / "mixture.csv").read_text() == expected.write_csv()
    assert mixture.equals(expected)
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


PACK = """
import dataclasses, json, sys
from pathlib import Path
import numpy as np
from mm1.config import load
from mm1.data import mixture, stages

def kib(field):  # VmRSS (now) or VmHWM (peak since the last reset), KiB
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1])

draw = mixture.MixtureSampler.__next__

def heavy(self):  # every sequence carries 4 fresh 64 KiB images: incompressible, none shared
    seq = draw(self)
    rng = np.random.default_rng(self.next_index)
    return dataclasses.replace(seq, images=[rng.bytes(64 * 1024) for _ in range(4)])

mixture.MixtureSampler.__next__ = heavy
overrides, manifest, tokenizer, out = json.loads(sys.argv[1]), *map(Path, sys.argv[2:])
cfg = load(None, overrides)
Path("/proc/self/clear_refs").write_text("5")  # the peak restarts here: imports are not counted
before = kib("VmRSS")
stages.pack(cfg, manifest, tokenizer, out)
print(json.dumps({"growth_kib": kib("VmHWM") - before}))
"""


def _pack_growth(steps: int, manifest: Path, tokenizer: Path, out: Path) -> int:
    """Peak RSS growth (KiB) of a fresh process that packs ``steps`` x 4 sequences of 256 KiB of images."""
    args = [json.dumps([*SMALL, f"train.steps={steps}"]), str(manifest), str(tokenizer), str(out)]
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(PACK), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["growth_kib"]


def test_pack_peak_memory_is_flat_in_the_number_of_sequences(world: Path, tmp_path: Path):
    """The pack stage on 32 and on 256 sequences (8 and 64 MiB of images): the packing process's peak
    RSS grows by the same amount (within 1.2x, and by far less than the larger file's extra size,
    which holding the sequences until the end would cost several times over)."""
    cfg = load(None, SMALL)
    manifest = world / "world" / "manifest.parquet"
    tok = make_tokenizer(cfg.tokenizer, manifest, tmp_path / "tok", cfg.data.max_bad_fraction)
    n = _pack_growth(8, manifest, tok.path, tmp_path / "n")
    eight_n = _pack_growth(64, manifest, tok.path, tmp_path / "8n")
    small, large = (tmp_path / run / "train.parquet" for run in ("n", "8n"))
    rows = [pl.scan_parquet(path).select(pl.len()).collect().item() for path in (small, large)]
    assert rows == [32, 256]
    size = [sum(f.stat().st_size for f in path.iterdir()) for path in (small, large)]  # sharded sets: folders
    extra_kib = (size[1] - size[0]) / 1024
    assert extra_kib > 7 * 32 * 256 * 0.95  # the 224 extra sequences' images are all in the file
    assert eight_n < 1.2 * n, (n, eight_n)
    assert eight_n - n < 0.25 * extra_kib, (n, eight_n, extra_kib)
