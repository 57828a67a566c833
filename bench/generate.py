"""Greedy decoding speed: megatron's static KV cache against re-running the whole prefix per token.

Uses a trained checkpoint (default: the default study's, ``make study`` first) and the eval
stage's own prompts: the first N examples of the coco-like benchmark at 0, 4 and 8 shots
(random demonstrations, the default captioning template), decoded in micro-batches as the eval
stage does, pinned to 2 CPU cores. Each (shots, method) is timed ``--repeats`` times, methods
alternating, and the median is kept; both methods must write identical tokens (checked).

Writes bench/results/generate.json (machine, versions, prompt lengths, tokens/s, speed-up) and
prints a table.

    python bench/generate.py                 # about 2 minutes on 2 cores
    python bench/generate.py --examples 16 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CORES = 2
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:CORES])

import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from mm1 import atomic  # noqa: E402
from mm1.config import EvalConfig, ParallelConfig  # noqa: E402
from mm1.data.images import stack_images  # noqa: E402
from mm1.data.tokenizer import TextTokenizer  # noqa: E402
from mm1.eval import harness  # noqa: E402
from mm1.eval.benchmarks import load_benchmark  # noqa: E402
from mm1.eval.generate import greedy  # noqa: E402
from mm1.models.mm1_model import MM1Model  # noqa: E402
from mm1.parallel.setup import distributed  # noqa: E402
from mm1.train import checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _decode_all(ctx, prompts, max_new: int, cache: bool) -> tuple[float, list[list[int]]]:
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].ids))
    outs: dict[int, list[int]] = {}
    start = time.perf_counter()
    for s in range(0, len(order), ctx.cfg.micro_batch_size):
        idx = order[s : s + ctx.cfg.micro_batch_size]
        images = stack_images([im for i in idx for im in prompts[i].images], ctx.image_size)
        gen = greedy(ctx.model, ctx.tok, [prompts[i].ids for i in idx], images, ctx.max_length, max_new, cache=cache)
        outs |= dict(zip(idx, gen, strict=True))
    return time.perf_counter() - start, [outs[i] for i in range(len(prompts))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "results/train/checkpoint")
    ap.add_argument("--tokenizer", type=Path, default=ROOT / "results/tokenizer/tokenizer.json")
    ap.add_argument("--data", type=Path, default=ROOT / "results/world")
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/generate.json")
    args = ap.parse_args()
    if not (args.checkpoint / "model.json").is_file():
        print(f"bench/generate.py: no checkpoint at {args.checkpoint}; run `make study` first", file=sys.stderr)
        return 1
    torch.set_num_threads(CORES)
    cfg = EvalConfig(num_examples=args.examples)
    tok = TextTokenizer(args.tokenizer)
    mc = checkpoint.read_meta(args.checkpoint)["model"]
    bench = load_benchmark(cfg.benchmarks[0], args.data, with_pool=True, num_examples=args.examples)
    rows = []
    with distributed(ParallelConfig(), seed=0):
        model = MM1Model(mc, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
        checkpoint.load_into(model, args.checkpoint)
        ctx = harness._Context(cfg, None, model.eval(), mc, tok, torch.device("cpu"))
        order = harness._demo_order(ctx, bench, max(cfg.shots))
        for k in cfg.shots:
            prompts = harness._prompts(ctx, bench, order, k)
            times: dict[str, list[float]] = {"cached": [], "recompute": []}
            outs = {}
            for _ in range(args.repeats):
                for method in ("cached", "recompute"):
                    t, outs[method] = _decode_all(ctx, prompts, args.max_new_tokens, method == "cached")
                    times[method].append(t)
            if outs["cached"] != outs["recompute"]:
                raise SystemExit(f"{k}-shot: the cached and recomputing decoders wrote different tokens")
            tokens = sum(len(o) for o in outs["cached"])
            med = {m: statistics.median(v) for m, v in times.items()}
            rows.append({
                "shots": k, "prompts": len(prompts), "mean_prompt_tokens": sum(len(p.ids) for p in prompts) / len(prompts),
                "generated_tokens": tokens, "cached_s": med["cached"], "recompute_s": med["recompute"],
                "cached_tokens_per_s": tokens / med["cached"], "recompute_tokens_per_s": tokens / med["recompute"],
                "speedup": med["recompute"] / med["cached"], "times": times,
            })  # fmt: skip
    result = {
        "bench": "generate",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cores": CORES, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "checkpoint": str(args.checkpoint), "micro_batch_size": cfg.micro_batch_size,
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "rows": rows,
    }  # fmt: skip
    atomic.write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(
        f"{'shots':>5} {'prompt tok':>10} {'gen tok':>7} {'cached tok/s':>12} {'recompute tok/s':>15} {'speed-up':>8}"
    )
    for r in rows:
        print(f"{r['shots']:>5} {r['mean_prompt_tokens']:>10.1f} {r['generated_tokens']:>7} "
              f"{r['cached_tokens_per_s']:>12.1f} {r['recompute_tokens_per_s']:>15.1f} {r['speedup']:>7.2f}x")  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
