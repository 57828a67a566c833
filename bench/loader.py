"""Throughput of the pre-training data path: the mixture sampler against one caption per sequence.

Builds a tokenizer and a synthetic source set (64 px PNGs, short alt-texts and longer synthetic
captions, small interleaved documents, text documents) in a temporary folder, pins itself to 2 CPU
cores, and measures sequences/s and tokens/s (non-pad input tokens, and loss tokens) of

- baseline: ``mm1.data.sequence.caption_sequence``, one image-caption pair per sequence
  (tokenises the caption at every call, builds torch tensors);
- sampler, first pass: a fresh ``MixtureSampler`` (5:5:1 mixture), records tokenised on first use;
- sampler, steady: the same sampler after every source finished an epoch (tokens cached);
- sampler, dp=4 rank 0 steady: one rank of four (it walks the whole global stream, packs 1/4);
- trainer batches: what the trainer does per step with the pack stage's file: read the packed
  parquet, then build micro-batches of 16 (tensors + every image decoded and resized to 32 px).

Writes bench/results/loader.json (machine, versions, numbers, ratios) and prints a table.

    python bench/loader.py            # full run (about a minute)
    python bench/loader.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

CORES = 2
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:CORES])
os.environ.setdefault("RAYON_NUM_THREADS", str(CORES))  # HF tokenizers' thread pool

import datetime  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from mm1 import atomic  # noqa: E402
from mm1.config import TokenizerConfig  # noqa: E402
from mm1.config.data import MixtureConfig  # noqa: E402
from mm1.data.batches import PackedData  # noqa: E402
from mm1.data.mixture import MixtureSampler  # noqa: E402
from mm1.data.packed_io import write_packed  # noqa: E402
from mm1.data.records import CaptionSample, InterleavedDoc, TextDoc  # noqa: E402
from mm1.data.sequence import caption_sequence  # noqa: E402
from mm1.data.tokenizer import TextTokenizer, train_tokenizer  # noqa: E402
from mm1.provenance import git_state, machine, package_versions  # noqa: E402

IMAGE_TOKENS = 16
SEQ_LENGTHS = (64, 256)
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]
WORDS = COLOURS + SHAPES + "a the of on in above below left right of next to small large two three is".split()


def _png(rng: np.random.Generator, size: int = 64) -> bytes:
    im = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(im)
    for _ in range(rng.integers(1, 4)):
        x, y = rng.integers(0, size - 16, 2)
        w = int(rng.integers(8, 24))
        draw.ellipse((int(x), int(y), int(x) + w, int(y) + w), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _words(rng: np.random.Generator, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(lo, hi + 1))))


def make_sources(n_cap: int, n_doc: int, n_text: int, seed: int = 0) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    pngs = [_png(rng) for _ in range(64)]  # a pool: encoding PNGs is not what is measured
    caps = [
        CaptionSample(f"c{i}", pngs[i % 64], {"alt": _words(rng, 3, 8), "synthetic": _words(rng, 12, 25)})
        for i in range(n_cap)
    ]
    docs = []
    for i in range(n_doc):
        texts, images = [], []
        for _ in range(rng.integers(1, 4)):
            texts += [_words(rng, 10, 40), None]
            images += [None, pngs[int(rng.integers(64))]]
        texts.append(_words(rng, 10, 40))
        images.append(None)
        docs.append(InterleavedDoc(f"d{i}", tuple(texts), tuple(images)))
    text = [TextDoc(f"t{i}", _words(rng, 50, 300)) for i in range(n_text)]
    return {"caption": caps, "interleaved": docs, "text": text}


def bench_baseline(tok: TextTokenizer, caps: list[CaptionSample], seq_length: int, n: int) -> dict:
    t0 = time.perf_counter()
    non_pad = loss = 0
    for i in range(n):
        seq = caption_sequence(tok, caps[i % len(caps)].captions["alt"], IMAGE_TOKENS, seq_length)
        non_pad += int((seq.tokens != tok.pad_id).sum())
        loss += int(seq.loss_mask.sum())
    return _result(n, non_pad, loss, time.perf_counter() - t0, seq_length)


def _result(n: int, non_pad: int, loss: int, seconds: float, seq_length: int) -> dict:
    return {
        "sequences": n,
        "seconds": round(seconds, 4),
        "sequences_per_s": n / seconds,
        "tokens_per_s": non_pad / seconds,
        "positions_per_s": n * seq_length / seconds,
        "loss_tokens_per_s": loss / seconds,
        "fill": non_pad / (n * seq_length),
    }


def _measure(sampler: MixtureSampler, n: int, seq_length: int, pad_id: int) -> dict:
    t0 = time.perf_counter()
    non_pad = loss = 0
    for _ in range(n):
        seq = next(sampler)
        non_pad += int(np.count_nonzero(seq.tokens[:-1] != pad_id))
        loss += int(np.count_nonzero(seq.loss_mask))
    return _result(n, non_pad, loss, time.perf_counter() - t0, seq_length)


def _warm(sampler: MixtureSampler) -> None:
    """Iterate until every source has finished one epoch (every record tokenised)."""
    while any(c["epoch"] < 1 for c in sampler.state_dict()["cursors"].values()):
        next(sampler)


def bench_sampler(tok: TextTokenizer, sources: dict, seq_length: int, n: int) -> dict[str, dict]:
    mix = MixtureConfig()
    out = {}
    sampler = MixtureSampler(sources, mix, tok, seq_length, IMAGE_TOKENS, seed=0)
    out["sampler_first_pass"] = _measure(sampler, n, seq_length, tok.pad_id)
    _warm(sampler)
    out["sampler_steady"] = _measure(sampler, n, seq_length, tok.pad_id)
    rank0 = MixtureSampler(sources, mix, tok, seq_length, IMAGE_TOKENS, seed=0, dp_rank=0, dp_size=4)
    _warm(rank0)
    out["sampler_dp4_rank0_steady"] = _measure(rank0, max(1, n // 4), seq_length, tok.pad_id)
    return out


def bench_batches(
    seqs: list, seq_length: int, pad_id: int, tmp: Path, image_size: int = 32, micro_batch: int = 16
) -> dict:
    """The trainer's side: the packed file -> micro-batches with images decoded at the encoder's size."""
    path = write_packed(seqs, tmp / f"packed-{seq_length}.parquet")
    t0 = time.perf_counter()
    data = PackedData.load(path, seq_length, image_size)
    n = len(data) - len(data) % micro_batch
    non_pad = loss = 0
    for start in range(0, n, micro_batch):
        batch = data.batch(np.arange(start, start + micro_batch))
        non_pad += int((batch["tokens"] != pad_id).sum())
        loss += int(batch["loss_mask"].sum())
    return _result(n, non_pad, loss, time.perf_counter() - t0, seq_length)


def machine_info() -> dict:
    return {**machine(), "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small source set and few sequences")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loader.json")
    args = p.parse_args(argv)
    torch.set_num_threads(CORES)
    sizes = (300, 100, 100, 1000) if args.quick else (3000, 1000, 1000, 10000)  # captions, docs, texts, sequences
    n_cap, n_doc, n_text, n_seq = sizes

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sources = make_sources(n_cap, n_doc, n_text)
        texts = [c for s in sources["caption"] for c in s.captions.values()]
        texts += [t for d in sources["interleaved"] for t in d.texts if t] + [d.text for d in sources["text"]]
        tok = TextTokenizer(train_tokenizer(TokenizerConfig(vocab_size=1024), texts, Path(tmp) / "tokenizer.json"))
        setup_s = time.perf_counter() - t0

        results = {}
        for seq_length in SEQ_LENGTHS:
            row = {"baseline_one_caption": bench_baseline(tok, sources["caption"], seq_length, n_seq)}
            row.update(bench_sampler(tok, sources, seq_length, n_seq))
            sampler = MixtureSampler(sources, MixtureConfig(), tok, seq_length, IMAGE_TOKENS, seed=0)
            seqs = [next(sampler) for _ in range(min(n_seq, 4000))]
            row["trainer_batches"] = bench_batches(seqs, seq_length, tok.pad_id, Path(tmp))
            base = row["baseline_one_caption"]
            row["ratio_to_baseline"] = {
                k: {m: row[k][m] / base[m] for m in ("sequences_per_s", "tokens_per_s", "loss_tokens_per_s")}
                for k in row
                if k.startswith(("sampler", "trainer"))
            }
            results[str(seq_length)] = row

    report = {
        "benchmark": "loader",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine_info(),
        "git": git_state(Path(__file__).resolve().parent),
        "packages": package_versions(),
        "setup": {
            "image_tokens": IMAGE_TOKENS,
            "mixture": MixtureConfig().model_dump(),
            "records": {"caption": n_cap, "interleaved": n_doc, "text": n_text},
            "sequences_measured": n_seq,
            "vocab_size": tok.vocab_size,
            "setup_seconds": round(setup_s, 2),
        },
        "tokens_are": "non-pad input tokens (tokens[:seq_length] != <pad>); fill = their share of positions",
        "results": results,
    }
    atomic.write_text(args.out, json.dumps(report, indent=2) + "\n")
    _print(results)
    print(f"wrote {args.out}")
    return 0


def _print(results: dict) -> None:
    head = f"{'seq':>4}  {'loader':<26}{'seq/s':>10}{'tokens/s':>12}{'loss tok/s':>12}{'fill':>6}{'x base (tok/s)':>16}"
    print(head)
    print("-" * len(head))
    for seq_length, row in results.items():
        for name, r in row.items():
            if name == "ratio_to_baseline":
                continue
            ratio = row["ratio_to_baseline"].get(name, {}).get("tokens_per_s", 1.0)
            print(
                f"{seq_length:>4}  {name:<26}{r['sequences_per_s']:>10.0f}{r['tokens_per_s']:>12.0f}"
                f"{r['loss_tokens_per_s']:>12.0f}{r['fill']:>6.2f}{ratio:>16.2f}"
            )


if __name__ == "__main__":
    sys.exit(main())
