"""The data-side stages: train the tokenizer, pack pre-training and SFT sequences.

Each stage writes provenance beside its outputs and reads its sources through the manifest that
the acquisition stage (:mod:`mm1.data.acquire`) or the world stage (:mod:`mm1.world.export`) wrote.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import polars as pl

from mm1 import atomic, provenance
from mm1.config import RunConfig, TokenizerConfig
from mm1.data.mixture import MixtureSampler
from mm1.data.packed_io import write_shards
from mm1.data.quarantine import Quarantine
from mm1.data.sft import build_sft, load_conversations
from mm1.data.sources import load_pretraining_sources, training_text
from mm1.data.tokenizer import TextTokenizer, train_tokenizer
from mm1.progress import progress
from mm1.stages import STAGES


def make_tokenizer(cfg: TokenizerConfig, manifest: Path, out_dir: Path, max_bad_fraction: float) -> TextTokenizer:
    """Train the BPE tokenizer on the mixture's text (or copy ``cfg.path``); writes ``out_dir/tokenizer.json``."""
    out = Path(out_dir) / "tokenizer.json"
    if cfg.path:
        source = Path(cfg.path)
        tok = TextTokenizer(source)  # checks the special tokens before anything is written
        atomic.write_bytes(out, source.read_bytes())
    else:
        quarantine = Quarantine()
        texts = training_text(load_pretraining_sources(manifest, quarantine))
        quarantine.check(max_bad_fraction)
        train_tokenizer(cfg, texts, out)
    tok = TextTokenizer(out)
    provenance.record(
        out_dir,
        stage="tokenizer",
        config={"tokenizer": cfg.model_dump(mode="json")},
        seed=None,
        inputs={"manifest": Path(manifest)} if not cfg.path else {"tokenizer": Path(cfg.path)},
        extra={"vocab_size": tok.vocab_size},
    )
    return tok


PACK_SECTIONS = STAGES["pack"].reads  # the config sections the pack stages read (mm1.stages)


def _read_checked(read, manifest: Path, out_dir: Path, max_bad_fraction: float):
    """``read(manifest, quarantine)``; the quarantine is written to ``out_dir`` and checked against
    ``data.max_bad_fraction`` before anything else is written."""
    quarantine = Quarantine()
    records = read(manifest, quarantine)
    quarantine.write(Path(out_dir) / "quarantine.parquet")
    quarantine.check(max_bad_fraction)
    return records, quarantine


def pack(cfg: RunConfig, manifest: Path, tokenizer: Path, out_dir: Path) -> pl.DataFrame:
    """Draw the run's train.steps x global_batch_size sequences from the mixture; write them and the
    realised mixture (``mixture.csv``). Returns the realised mixture. Each sequence is written (a block
    of train.micro_batch_size rows at a time, into the shards of the folder ``train.parquet``) and
    counted as it is drawn: memory does not grow with their number (the source records are held whole)."""
    out_dir = Path(out_dir)
    tok = TextTokenizer(tokenizer)
    sources, quarantine = _read_checked(load_pretraining_sources, manifest, out_dir, cfg.data.max_bad_fraction)
    sampler = MixtureSampler(
        sources,
        cfg.data.mixture,
        tok,
        seq_length=cfg.model.decoder.seq_length,
        image_tokens=cfg.model.connector.num_tokens,
        seed=cfg.train.seed,
    )
    n = cfg.train.steps * cfg.train.global_batch_size
    tally = sampler.tally()
    drawn = progress(itertools.islice(sampler, n), total=n, desc="pack", unit="seq")
    rows = ((index, tally.add(seq)) for index, seq in enumerate(drawn))  # written and counted as drawn
    write_shards(rows, out_dir / "train.parquet", block_rows=cfg.train.micro_batch_size)  # a block per micro-batch
    mixture = tally.frame()
    atomic.write_text(out_dir / "mixture.csv", mixture.write_csv())
    provenance.record(
        out_dir,
        stage="pack",
        config=provenance.sections(cfg, PACK_SECTIONS),
        seed=cfg.train.seed,
        inputs={"manifest": Path(manifest), "tokenizer": Path(tokenizer)},
        extra={"sequences": n, "quarantined": len(quarantine)},
    )
    return mixture


SFT_SECTIONS = STAGES["sft_pack"].reads


def sft_pack(cfg: RunConfig, manifest: Path, tokenizer: Path, out_dir: Path) -> dict:
    """Turn the manifest's instruction conversations into SFT sequences (``train.parquet``, loss on
    the answers only; pictures split into crops + overview when ``sft.image_grid`` > 1)."""
    out_dir = Path(out_dir)
    tok = TextTokenizer(tokenizer)
    conversations, _ = _read_checked(load_conversations, manifest, out_dir, cfg.data.max_bad_fraction)
    stats = build_sft(
        cfg.sft,
        conversations,
        tok,
        out_dir / "train.parquet",
        seq_length=cfg.model.decoder.seq_length,
        image_tokens=cfg.model.connector.num_tokens,
        image_size=cfg.model.encoder.image_size,
    ).as_dict()
    provenance.record(
        out_dir,
        stage="sft_pack",
        config=provenance.sections(cfg, SFT_SECTIONS),
        seed=cfg.sft.seed,
        inputs={"manifest": Path(manifest), "tokenizer": Path(tokenizer)},
        extra=stats,
    )
    return stats
