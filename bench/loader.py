"""Throughput of the pre-training data path: the mixture sampler against one caption per sequence.

Builds a tokenizer and a synthetic source set (64 px PNGs, short alt-texts and longer synthetic
captions, small interleaved documents, text documents) in a temporary folder, pins itself to 2 CPU
cores, and measures sequences/s and tokens/s (non-pad input tokens, and loss tokens) of

- baseline: ``mm1.data.sequence.caption_sequence``, one image-caption pair per sequence
  (tokenises the caption at every call, builds torch tensors);
- sampler, first pass: a fresh ``MixtureSampler`` (5:5:1 mixture), records tokenised on first use;
- sampler, steady: the same sampler after every source finished an epoch (tokens cached);
- sampler, dp=4 rank 0 steady: one rank of four (it walks the whole global stream, packs 1/4);
- trainer batches: what the trainer does per step with the pack stage's file: stream it block by
  block (``mm1.data.stream``, in-process), building micro-batches of 16 (tensors + every image
  decoded and resized to 32 px).

Then, at the default config's sequence length (256), the loader against the trainer:

- loader workers: ``torch.utils.data.DataLoader`` with 1 and with 2 worker processes, worker w of W
  being data-parallel rank w of W of the mixture (``MixtureSampler(dp_rank=w, dp_size=W)``; under
  data parallelism rank r's workers would be ranks r * W + w of dp * W). Fresh workers (records
  tokenised on first use), timed from the loader's start to its last item, in the main process:
  either packed sequences, or micro-batches of ``train.micro_batch_size`` ready for the model
  (tensors + images decoded at the encoder's size), what the trainer would take from it;
- trainer: ``mm1.train.trainer.train`` of the default miniature model (``RunConfig()``: 4 x 128
  decoder, 2-layer ViT, batch 8 x 256) for a few steps on a packed file of these sequences, one
  process, 2 threads; the median ``step_time_s`` after the first two steps -> sequences/s consumed.
  The loader should outrun it 10x (``headline``).

Writes bench/results/loader.json (machine, versions, numbers, ratios, headline) and prints a table.

    python bench/loader.py            # full run (about a minute on 2 cores)
    python bench/loader.py --quick    # about 30 s
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # loader workers are forked after the tokenizer ran

import statistics  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from run import report, row, write  # noqa: E402  (bench/run.py: the harness's report format)

from mm1.config import RunConfig, TokenizerConfig, load  # noqa: E402
from mm1.config.data import MixtureConfig  # noqa: E402
from mm1.data.batches import PackedData  # noqa: E402
from mm1.data.mixture import MixtureSampler  # noqa: E402
from mm1.data.packed_io import write_packed  # noqa: E402
from mm1.data.records import CaptionSample, InterleavedDoc, TextDoc  # noqa: E402
from mm1.data.sequence import caption_sequence  # noqa: E402
from mm1.data.stream import RankBatches, StepLoader, open_packed  # noqa: E402
from mm1.data.tokenizer import TextTokenizer, train_tokenizer  # noqa: E402

IMAGE_TOKENS = 16  # = RunConfig().model.connector.num_tokens
SEQ_LENGTHS = (64, 256)
WORKERS = (1, 2)
GOAL = 10.0  # the loader should produce 10x what the trainer consumes
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
    path = write_packed(seqs, tmp / f"packed-{seq_length}.parquet", block_rows=micro_batch)
    t0 = time.perf_counter()
    reader = open_packed(path, seq_length)  # the trainer's streaming reader, in-process (0 workers)
    steps = len(reader) // micro_batch
    loader = StepLoader(RankBatches(reader, image_size, micro_batch, micro_batch, 0, 1), last_step=steps)
    non_pad = loss = 0
    for step in range(steps):  # one micro-batch a step
        for batch in loader.step(step):
            non_pad += int((batch["tokens"] != pad_id).sum())
            loss += int(batch["loss_mask"].sum())
    return _result(steps * micro_batch, non_pad, loss, time.perf_counter() - t0, seq_length)


class _Shard(torch.utils.data.IterableDataset):
    """One loader worker's share of the mixture: worker w of W is data-parallel rank w of W; yields
    its packed sequences, or micro-batches of them as the trainer's forward takes them."""

    def __init__(self, sources: dict, tok: TextTokenizer, seq_length: int, n: int, micro_batch: int, image_size: int):
        self.sources, self.tok, self.seq_length, self.n = sources, tok, seq_length, n
        self.micro_batch, self.image_size = micro_batch, image_size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, workers = (info.id, info.num_workers) if info else (0, 1)
        sampler = MixtureSampler(
            self.sources, MixtureConfig(), self.tok, self.seq_length, IMAGE_TOKENS, seed=0, dp_rank=w, dp_size=workers
        )
        mine = len(range(w, self.n, workers))  # global sequences w, w + W, ... below n
        if not self.micro_batch:
            yield from (next(sampler) for _ in range(mine))
            return
        for _ in range(mine // self.micro_batch):
            seqs = [next(sampler) for _ in range(self.micro_batch)]
            yield PackedData(seqs, self.image_size).batch(np.arange(len(seqs)))


def _first(batch):  # DataLoader's collate_fn: one item (a sequence or a ready micro-batch) as it is
    return batch


def bench_workers(
    tok: TextTokenizer, sources: dict, seq_length: int, n: int, workers: int, micro_batch: int, image_size: int
) -> dict:
    """The mixture in ``workers`` DataLoader processes: sequences (micro_batch 0) or micro-batches."""
    shard = _Shard(sources, tok, seq_length, n, micro_batch, image_size)
    loader = torch.utils.data.DataLoader(shard, batch_size=None, num_workers=workers, collate_fn=_first)
    t0 = time.perf_counter()
    count = non_pad = loss = 0
    for item in loader:
        if micro_batch:
            count += len(item["tokens"])
            non_pad += int((item["tokens"] != tok.pad_id).sum())
            loss += int(item["loss_mask"].sum())
        else:
            count += 1
            non_pad += int(np.count_nonzero(item.tokens[:-1] != tok.pad_id))
            loss += int(np.count_nonzero(item.loss_mask))
    out = _result(count, non_pad, loss, time.perf_counter() - t0, seq_length)
    return out | {"workers": workers, "micro_batch": micro_batch}


def bench_trainer(seqs: list, tok: TextTokenizer, tmp: Path, steps: int) -> dict:
    """Sequences/s the trainer consumes: a few steps of ``mm1.train.trainer.train``, default model."""
    from mm1.train.trainer import train  # megatron: imported only here

    cfg = load(None, [f"train.steps={steps}", "train.warmup_steps=1", "train.resume=false"])
    tc, seq_length = cfg.train, cfg.model.decoder.seq_length
    used = seqs[: steps * tc.global_batch_size]
    packed = write_packed(used, tmp / "trainer" / "train.parquet")
    t0 = time.perf_counter()
    metrics = train(cfg, packed, tok.path, tmp / "trainer" / "out").metrics
    wall = time.perf_counter() - t0
    times = metrics["step_time_s"].to_list()[2:]  # step 1 and 2 warm up (allocations, first-call paths)
    step_s = statistics.median(times)
    non_pad = sum(int(np.count_nonzero(s.tokens[:-1] != tok.pad_id)) for s in used) / len(used)
    loss = sum(int(np.count_nonzero(s.loss_mask)) for s in used) / len(used)
    per_s = tc.global_batch_size / step_s
    return {
        "steps": steps, "global_batch_size": tc.global_batch_size, "micro_batch_size": tc.micro_batch_size,
        "seq_length": seq_length, "step_time_s": step_s, "step_times_s": [round(t, 4) for t in times],
        "sequences_per_s": per_s, "tokens_per_s": per_s * non_pad, "positions_per_s": per_s * seq_length,
        "loss_tokens_per_s": per_s * loss, "fill": non_pad / seq_length, "wall_s_with_startup": round(wall, 1),
    }  # fmt: skip


def bench_vs_trainer(tok: TextTokenizer, sources: dict, tmp: Path, quick: bool) -> dict:
    """Loader workers (1 and 2) against the trainer, at the default config's sequence length."""
    cfg = RunConfig()
    seq_length, micro, size = cfg.model.decoder.seq_length, cfg.train.micro_batch_size, cfg.model.encoder.image_size
    n_seq, n_batch, steps = (2000, 800, 6) if quick else (8000, 3200, 12)
    out: dict = {"seq_length": seq_length}
    for w in WORKERS:
        out[f"workers_{w}_sequences"] = bench_workers(tok, sources, seq_length, n_seq, w, 0, size)
        out[f"workers_{w}_micro_batches"] = bench_workers(tok, sources, seq_length, n_batch, w, micro, size)
    sampler = MixtureSampler(sources, MixtureConfig(), tok, seq_length, IMAGE_TOKENS, seed=0)
    out["trainer"] = bench_trainer([next(sampler) for _ in range(steps * cfg.train.global_batch_size)], tok, tmp, steps)
    trainer = out["trainer"]["sequences_per_s"]
    out["ratio_to_trainer"] = {k: v["sequences_per_s"] / trainer for k, v in out.items() if k.startswith("workers")}
    return out


def headline(results: dict) -> list[dict]:
    """The loader against the trainer at seq 256 (goal 10x), and the sampler against one caption per sequence."""
    vs, at256 = results["vs_trainer"], results["256"]
    trainer = vs["trainer"]

    def vs_trainer(name: str, r: dict, unit: str = "seq/s") -> dict:
        key = {"seq/s": "sequences_per_s", "tokens/s": "tokens_per_s"}[unit]
        ratio = r[key] / trainer[key]
        return row(name, r[key], unit, trainer[key], f">= {GOAL:g}x the trainer", ratio >= GOAL)

    rows = []
    for w in WORKERS:
        name = f"loader, {w} worker{'s' * (w > 1)}: mixture+packing -> micro-batches (images decoded), seq 256"
        rows += [vs_trainer(name, vs[f"workers_{w}_micro_batches"], u) for u in ("seq/s", "tokens/s")]
    for w in WORKERS:
        name = f"loader, {w} worker{'s' * (w > 1)}: mixture+packing -> packed sequences, seq 256"
        rows.append(vs_trainer(name, vs[f"workers_{w}_sequences"]))
    rows.append(vs_trainer("packed file -> micro-batches (the trainer's reader, in-process), seq 256",
                           at256["trainer_batches"]))  # fmt: skip
    name = "mixture sampler, steady, vs one caption per sequence (tokens/s), seq 256"
    rows.append(
        row(name, at256["sampler_steady"]["tokens_per_s"], "tokens/s", at256["baseline_one_caption"]["tokens_per_s"])
    )
    return rows


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

        results: dict = {}
        for seq_length in SEQ_LENGTHS:
            loaders = {"baseline_one_caption": bench_baseline(tok, sources["caption"], seq_length, n_seq)}
            loaders.update(bench_sampler(tok, sources, seq_length, n_seq))
            sampler = MixtureSampler(sources, MixtureConfig(), tok, seq_length, IMAGE_TOKENS, seed=0)
            seqs = [next(sampler) for _ in range(min(n_seq, 4000))]
            loaders["trainer_batches"] = bench_batches(seqs, seq_length, tok.pad_id, Path(tmp))
            base = loaders["baseline_one_caption"]
            loaders["ratio_to_baseline"] = {
                k: {m: loaders[k][m] / base[m] for m in ("sequences_per_s", "tokens_per_s", "loss_tokens_per_s")}
                for k in loaders
                if k.startswith(("sampler", "trainer"))
            }
            results[str(seq_length)] = loaders
        results["vs_trainer"] = bench_vs_trainer(tok, sources, Path(tmp), args.quick)

    setup = {
        "image_tokens": IMAGE_TOKENS,
        "mixture": MixtureConfig().model_dump(),
        "records": {"caption": n_cap, "interleaved": n_doc, "text": n_text},
        "sequences_measured": n_seq,
        "vocab_size": tok.vocab_size,
        "vocab_note": "the trainer's output layer has this vocabulary (the study's tokenizer: 1024), so its "
        "steps are a little faster than the study's and loader/trainer ratios a little low",
        "setup_seconds": round(setup_s, 2),
    }
    data = report("loader", args.quick, results, headline(results), setup=setup,
                  tokens_are="non-pad input tokens (tokens[:seq_length] != <pad>); fill = their share of positions")  # fmt: skip
    data["machine"] |= {"torch_threads": torch.get_num_threads()}
    write(args.out, data)
    _print(results)
    print(f"wrote {args.out}")
    return 0


def _print(results: dict) -> None:
    head = f"{'seq':>4}  {'loader':<26}{'seq/s':>10}{'tokens/s':>12}{'loss tok/s':>12}{'fill':>6}{'x base (tok/s)':>16}"
    print(head)
    print("-" * len(head))
    for seq_length, loaders in results.items():
        if seq_length == "vs_trainer":
            continue
        for name, r in loaders.items():
            if name == "ratio_to_baseline":
                continue
            ratio = loaders["ratio_to_baseline"].get(name, {}).get("tokens_per_s", 1.0)
            print(
                f"{seq_length:>4}  {name:<26}{r['sequences_per_s']:>10.0f}{r['tokens_per_s']:>12.0f}"
                f"{r['loss_tokens_per_s']:>12.0f}{r['fill']:>6.2f}{ratio:>16.2f}"
            )

    vs = results["vs_trainer"]
    print(
        f"\nseq {vs['seq_length']}: loader workers against the trainer ({vs['trainer']['sequences_per_s']:.1f} seq/s)"
    )
    for name, ratio in vs["ratio_to_trainer"].items():
        print(f"  {name:<28}{vs[name]['sequences_per_s']:>10.0f} seq/s {ratio:>9.1f}x the trainer")


if __name__ == "__main__":
    sys.exit(main())
