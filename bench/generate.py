"""Greedy decoding speed: megatron's static KV cache against re-running the whole prefix per token.

The eval stage's own prompts: the first N examples of the coco-like benchmark at 0, 4 and 8 shots
(random demonstrations, the default captioning template), decoded in micro-batches as the eval
stage does, pinned to 2 CPU cores. Each (shots, method) is timed ``--repeats`` times, methods
alternating, and the median is kept; both methods must write identical tokens (checked).

The model: by default a randomly initialised (seeded) default miniature model (``RunConfig()``:
4 x 128 decoder, 2-layer ViT, 256-token context) saved with the project's checkpoint code, over a
small world and its tokenizer built in a temporary folder (about 15 s), so the benchmark needs
nothing else. Its output layer is scaled up 20x, as the eval tests do, so greedy choices are not
near-ties; an untrained model rarely writes <eoc>, so it decodes about ``--max-new-tokens`` per
prompt, where a trained one stops after a caption (the 4/8-shot speed-ups then differ). With
``--checkpoint`` a trained one (e.g. ``make study``'s, with its tokenizer and world) is used.

Writes bench/results/generate.json (machine, versions, prompt lengths, tokens/s, speed-up,
headline) and prints a table.

    python bench/generate.py                 # about 1.5 minutes on 2 cores
    python bench/generate.py --quick         # 16 prompts, 1 repeat
    python bench/generate.py --checkpoint results/train/base/checkpoint \\
        --tokenizer results/tokenizer/base/tokenizer.json --data results/world/base
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

CORES = 2
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:CORES])

import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from run import report, row, write  # noqa: E402  (bench/run.py: the harness's report format)

from mm1.config import EvalConfig, ParallelConfig, load  # noqa: E402
from mm1.data.images import stack_images  # noqa: E402
from mm1.data.stages import make_tokenizer  # noqa: E402
from mm1.data.tokenizer import TextTokenizer  # noqa: E402
from mm1.eval import harness  # noqa: E402
from mm1.eval.benchmarks import load_benchmark  # noqa: E402
from mm1.eval.generate import greedy  # noqa: E402
from mm1.models.init import init_weights  # noqa: E402
from mm1.models.mm1_model import MM1Model  # noqa: E402
from mm1.parallel.setup import distributed  # noqa: E402
from mm1.train import checkpoint  # noqa: E402
from mm1.world.export import make_world  # noqa: E402

# A world just big enough for the prompts (benchmark val = the prompts, train = the demonstrations)
# and for a tokenizer near the study's 1024 tokens; the model is the default one.
WORLD = ["world.n_captions=1000", "world.n_documents=200", "world.n_text=400", "world.n_bench_train=32",
         "world.n_textcore=0", "world.n_sft=0", "world.n_multiple_choice=0"]  # fmt: skip
OUTPUT_SCALE = 20.0


def random_run(root: Path, examples: int) -> dict[str, Path]:
    """A world, its tokenizer and a seeded random checkpoint of the default model under ``root``."""
    cfg = load(None, [*WORLD, f"world.n_bench_val={examples}"])
    make_world(cfg.world, root / "world")
    tok = make_tokenizer(cfg.tokenizer, root / "world" / "manifest.parquet", root / "tokenizer", 0.01)
    with distributed(ParallelConfig(), seed=0):
        model = MM1Model(cfg.model, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
        init_weights(model, cfg.train.seed)  # as the trainer starts
        with torch.no_grad():  # sharper logits than the init's: greedy choices are not near-ties
            for p in model.language_model.output_layer.parameters():
                p.mul_(OUTPUT_SCALE)
        meta = {"model": cfg.model.model_dump(mode="json"), "vocab_size": tok.vocab_size,
                "image_token_id": tok.image_id, "steps": 0}  # fmt: skip
        ckpt = checkpoint.save(model, meta, root / "checkpoint")
    return {"checkpoint": ckpt, "tokenizer": tok.path, "data": root / "world"}


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


def measure(run: dict[str, Path], examples: int, repeats: int, max_new: int) -> list[dict]:
    """Per shot count: median seconds of each method, tokens/s and the speed-up."""
    cfg = EvalConfig(num_examples=examples)
    tok = TextTokenizer(run["tokenizer"])
    mc = checkpoint.read_meta(run["checkpoint"])["model"]
    bench = load_benchmark(cfg.benchmarks[0], run["data"], with_pool=True, num_examples=examples)
    rows = []
    with distributed(ParallelConfig(), seed=0):
        model = MM1Model(mc, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
        checkpoint.load_into(model, run["checkpoint"])
        ctx = harness._Context(cfg, None, model.eval(), mc, tok, torch.device("cpu"))
        order = harness._demo_order(ctx, bench, max(cfg.shots))
        for k in cfg.shots:
            prompts = harness._prompts(ctx, bench, order, k)
            times: dict[str, list[float]] = {"cached": [], "recompute": []}
            outs = {}
            for _ in range(repeats):
                for method in ("cached", "recompute"):
                    t, outs[method] = _decode_all(ctx, prompts, max_new, method == "cached")
                    times[method].append(t)
            if outs["cached"] != outs["recompute"]:
                raise SystemExit(f"{k}-shot: the cached and recomputing decoders wrote different tokens")
            tokens = sum(len(o) for o in outs["cached"])
            med = {m: statistics.median(v) for m, v in times.items()}
            rows.append({
                "shots": k, "prompts": len(prompts), "mean_prompt_tokens": sum(len(p.ids) for p in prompts) / len(prompts),
                "generated_tokens": tokens, "identical_tokens": True, "cached_s": med["cached"],
                "recompute_s": med["recompute"], "cached_tokens_per_s": tokens / med["cached"],
                "recompute_tokens_per_s": tokens / med["recompute"], "speedup": med["recompute"] / med["cached"],
                "times": times,
            })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: a random one, built here)")
    ap.add_argument("--tokenizer", type=Path, help="its tokenizer.json (with --checkpoint)")
    ap.add_argument("--data", type=Path, help="its world or acquired data folder (with --checkpoint)")
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="16 prompts, one repeat")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "generate.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.examples, args.repeats = 16, 1
    if args.checkpoint and not (args.tokenizer and args.data):
        ap.error("--checkpoint needs --tokenizer and --data (the run's own)")
    torch.set_num_threads(CORES)
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        t0 = time.perf_counter()
        if args.checkpoint:
            run, model = {"checkpoint": args.checkpoint, "tokenizer": args.tokenizer, "data": args.data}, "trained"
        else:
            run, model = random_run(Path(tmp), args.examples), "random"
        setup_s = time.perf_counter() - t0
        rows = measure(run, args.examples, args.repeats, args.max_new_tokens)
        vocab = TextTokenizer(run["tokenizer"]).vocab_size

    setup = {
        "model": model,
        "model_note": (
            f"seeded random init of the default model, output layer x{OUTPUT_SCALE:g}: decodes ~max_new_tokens per prompt"
            if model == "random"
            else "trained checkpoint: stops at <eoc>"
        ),
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "vocab_size": vocab,
        "micro_batch_size": EvalConfig().micro_batch_size,
        "max_new_tokens": args.max_new_tokens,
        "examples": args.examples,
        "repeats": args.repeats,
        "setup_seconds": round(setup_s, 1),
    }
    head = [
        row(f"KV-cached greedy decoding vs full recomputation, {r['shots']}-shot ({r['mean_prompt_tokens']:.0f}-token "
            f"prompts, {model} model)", r["cached_tokens_per_s"], "tokens/s", r["recompute_tokens_per_s"])
        for r in rows
    ]  # fmt: skip
    write(args.out, report("generate", args.quick, {"rows": rows}, head, setup=setup))
    print(f"{model} model, vocabulary {vocab}")
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
