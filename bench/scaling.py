"""Scaling curves of the megatron training step on CPU: sequence length, images, experts.

The megatron path of ``bench/train_throughput.py`` (the trainer's model, optimizer and step; the
study's ablation-scale model, micro-batch 8, fp32, 2 cores, 2 torch threads), one point per config:

- sequence length 128, 256, 512, with one image-caption pair per 64 positions (2, 4, 8 images);
- images per sequence 0, 1, 2, 4, 8 at 256 positions (the decoder's work is the same: image
  tokens take text positions; the ViT and connector grow with the images);
- experts 0 (dense), 2, 4, 8 with top-2 routing (``model.moe``: every ``layer_freq``-th decoder layer
  is an MoE layer, the config's 2: 1 of the 2 layers), 256 positions, 4 images.

Every model is built first; then rounds visit every point in turn (alternating order), a warm-up
step and timed steps each, so machine noise spreads over all points; the median step time per point.
Writes bench/results/scaling.json and scaling.png (3 panels) and prints a table.

    python bench/scaling.py            # full run (about 2 minutes on 2 cores)
    python bench/scaling.py --quick    # about 40 s
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from run import report, row, write  # bench/run.py: the harness's report format
from train_throughput import (
    IMAGES_PER_SEQUENCE,
    VOCAB,
    Megatron,
    ablation_config,
    pin_cores,
    synthetic_batches,
    time_rounds,
    warn_if_busy,
)

from mm1 import atomic
from mm1.models.flops import step_flops

SEQ_LENGTHS = (128, 256, 512)
POSITIONS_PER_IMAGE = 64  # the seq-length sweep keeps this density (4 images at 256)
IMAGES = (0, 1, 2, 4, 8)
EXPERTS = (0, 2, 4, 8)
TOP_K = 2


def points() -> dict[str, dict]:
    """name -> {seq_length, images, experts}: the union of the three sweeps (shared points once)."""
    pts = {}
    for s in SEQ_LENGTHS:
        pts[f"s{s}-i{s // POSITIONS_PER_IMAGE}-e0"] = {
            "seq_length": s,
            "images": s // POSITIONS_PER_IMAGE,
            "experts": 0,
        }
    for k in IMAGES:
        pts[f"s256-i{k}-e0"] = {"seq_length": 256, "images": k, "experts": 0}
    for e in EXPERTS:
        pts[f"s256-i{IMAGES_PER_SEQUENCE}-e{e}"] = {"seq_length": 256, "images": IMAGES_PER_SEQUENCE, "experts": e}
    return pts


def point_config(p: dict):
    moe = [f"model.moe.num_experts={p['experts']}", f"model.moe.top_k={TOP_K}"] if p["experts"] else []
    return ablation_config(f"model.decoder.seq_length={p['seq_length']}", *moe)


def measure(quick: bool) -> dict:
    from mm1.parallel.setup import distributed

    rounds, warm, steps = (1, 1, 2) if quick else (3, 1, 4)
    pts = points()
    cfgs = {name: point_config(p) for name, p in pts.items()}
    base = ablation_config()
    out: dict = {"points": {}}
    with distributed(base.parallel, base.train.seed) as rank:
        paths, batches, build_s = {}, {}, {}
        for name, p in pts.items():
            t0 = time.perf_counter()
            paths[name] = Megatron(cfgs[name], rank)
            build_s[name] = time.perf_counter() - t0
            batches[name] = synthetic_batches(cfgs[name], p["images"], 2)
        # time_rounds takes one batch list for all paths: each path steps on its own batches
        timed = {}
        for r in range(rounds):
            order = list(pts) if r % 2 == 0 else list(pts)[::-1]
            for name in order:
                rec = time_rounds({name: paths[name]}, batches[name], 1, warm, steps)[name]
                acc = timed.setdefault(name, {"step_s": [], "round_median_s": [], "losses": []})
                for key in acc:
                    acc[key] += rec[key]
        for name, p in pts.items():
            cfg, rec = cfgs[name], timed[name]
            step = statistics.median(rec["step_s"])
            flops = step_flops(cfg, p["images"], VOCAB)["total"]
            out["points"][name] = p | {
                "step_s": step, "step_s_all": [round(t, 4) for t in rec["step_s"]],
                "round_median_s": [round(t, 4) for t in rec["round_median_s"]],
                "tokens_per_s": cfg.train.global_batch_size * p["seq_length"] / step,
                "gflop_per_s": flops / step / 1e9, "params": paths[name].params,
                "build_s": round(build_s[name], 2), "loss_last": rec["losses"][-1],
            }  # fmt: skip
    out["schedule"] = {"rounds": rounds, "warmup_steps_per_visit": warm, "timed_steps_per_visit": steps}
    return out


def sweeps(results: dict) -> dict[str, list[dict]]:
    """The three curves, each a list of points in sweep order."""
    at = {(r["seq_length"], r["images"], r["experts"]): r for r in results["points"].values()}
    return {
        "seq_length": [at[(s, s // POSITIONS_PER_IMAGE, 0)] for s in SEQ_LENGTHS],
        "images": [at[(256, k, 0)] for k in IMAGES],
        "experts": [at[(256, IMAGES_PER_SEQUENCE, e)] for e in EXPERTS],
    }


def derived(results: dict) -> dict:
    curves = sweeps(results)
    seq = [r["step_s"] for r in curves["seq_length"]]
    per_doubling = [b / a for a, b in zip(seq, seq[1:], strict=False)]
    imgs = curves["images"]
    slope, intercept = np.polyfit([r["images"] for r in imgs], [r["step_s"] for r in imgs], 1)
    dense = curves["experts"][0]["step_s"]
    return {
        "step_time_ratio_per_seq_doubling": per_doubling,
        "step_time_ratio_per_seq_doubling_geomean": float(np.exp(np.mean(np.log(per_doubling)))),
        "s_per_extra_image": float(slope), "s_at_zero_images_fit": float(intercept),
        "moe_to_dense": {r["experts"]: r["step_s"] / dense for r in curves["experts"][1:]},
    }  # fmt: skip


def headline(results: dict, d: dict) -> list[dict]:
    curves = sweeps(results)
    seq, imgs, exp = curves["seq_length"], curves["images"], curves["experts"]
    rows = [
        row(f"step time, seq {b['seq_length']} vs {a['seq_length']} (images per 64 positions)", b["step_s"], "s",
            a["step_s"]) for a, b in zip(seq, seq[1:], strict=False)
    ]  # fmt: skip
    rows.append(row("step time per extra image per sequence (seq 256, batch 8; linear fit)",
                    1e3 * d["s_per_extra_image"], "ms/image"))  # fmt: skip
    rows.append(row("step time, 8 images vs none per sequence (seq 256)", imgs[-1]["step_s"], "s", imgs[0]["step_s"]))
    rows += [row(f"step time, MoE {r['experts']} experts top-{TOP_K} vs dense (seq 256, 4 images)", r["step_s"],
                 "s", exp[0]["step_s"]) for r in exp[1:]]  # fmt: skip
    return rows


def plot(results: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = sweeps(results)
    labels = {"seq_length": "sequence length (1 image / 64 positions)", "images": "images per sequence (seq 256)",
              "experts": f"experts, top-{TOP_K} (0 = dense; seq 256, 4 images)"}  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    for ax, (key, pts) in zip(axes, curves.items(), strict=True):
        x = [r[key] for r in pts]
        y = [1e3 * r["step_s"] for r in pts]
        lo = [1e3 * (r["step_s"] - min(r["step_s_all"])) for r in pts]
        hi = [1e3 * (max(r["step_s_all"]) - r["step_s"]) for r in pts]
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3)
        if key == "seq_length":
            ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(v) for v in x])
        ax.set_xlabel(labels[key])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("step time, ms (median; bars: min-max)")
    fig.suptitle("megatron-core training step on 2 CPU cores, ablation model (2 x 128 decoder), batch 8")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _print(results: dict, d: dict) -> None:
    head = f"{'sweep':<12}{'seq':>5}{'images':>7}{'experts':>8}{'step s':>9}{'tokens/s':>10}{'GFLOP/s':>9}"
    print(head + "\n" + "-" * len(head))
    for key, pts in sweeps(results).items():
        for r in pts:
            print(f"{key:<12}{r['seq_length']:>5}{r['images']:>7}{r['experts']:>8}{r['step_s']:>9.3f}"
                  f"{r['tokens_per_s']:>10.0f}{r['gflop_per_s']:>9.2f}")  # fmt: skip
    ratios = ", ".join(f"{v:.2f}" for v in d["step_time_ratio_per_seq_doubling"])
    print(f"per seq doubling: {ratios}x; per extra image: {1e3 * d['s_per_extra_image']:.1f} ms; "
          f"MoE/dense: " + ", ".join(f"{e}: {v:.2f}x" for e, v in d["moe_to_dense"].items()))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one round, two timed steps per point")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scaling.json")
    args = p.parse_args(argv)
    pin_cores()
    t0, load_before = time.perf_counter(), os.getloadavg()[0]
    results = measure(args.quick)
    d = derived(results)
    results["derived"] = d
    png = args.out.with_suffix(".png")
    atomic.write_bytes(png, plot(results))
    setup = {"base_model": ablation_config().model.model_dump(mode="json"), "vocab_size": VOCAB,
             "moe_layer_freq": ablation_config().model.moe.layer_freq, "top_k": TOP_K,
             "positions_per_image_in_seq_sweep": POSITIONS_PER_IMAGE, "torch_threads": torch.get_num_threads(),
             "plot": str(png), "wall_s": round(time.perf_counter() - t0, 1),
             "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]}}  # fmt: skip
    warn_if_busy(load_before)
    write(args.out, report("scaling", args.quick, results, headline(results, d), setup=setup))
    _print(results, d)
    print(f"wrote {args.out} and {png} ({setup['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
