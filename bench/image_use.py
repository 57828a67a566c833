"""Does an ablation model read its images, and after how many steps of multimodal pre-training?

For one experiment of the study (default ``abl``) and each step count N, this packs N x the global
batch of pre-training sequences (``mm1 pack``), trains N steps from the experiment's own LLM and
encoder checkpoints (``mm1 train``, the study's config with ``--set train.steps=N``,
``train.warmup_steps=N/10``) and evaluates the result (``mm1 eval run``, likelihood scores only).
Two measures of image use, each against a control in the same run:

- the eval's **image gain**: the 0-shot likelihood average (the lessons' metric) minus the same
  prompts scored with each query image replaced by another item's (``mm1.eval.ll_scores``);
- the **caption loss gap** on the run's own training data: the mean loss over the caption tokens
  of the first 48 caption sequences with their images, with the images shuffled among the
  sequences' images, and with blank (zero) images. A model that reads its images loses more when
  they are shuffled.

It needs the study's upstream outputs for the experiment (world, tokenizer, LLM and encoder
stages: ``snakemake results/llm/abl/checkpoint results/encoder/base/checkpoint``).
Writes bench/results/image_use.json.

    python bench/image_use.py                         # abl at 60, 600 and 2000 steps (~6 min on 2 cores)
    python bench/image_use.py --steps 60,300 --exp res-48
    python bench/image_use.py --steps 300,600 --arm 'train.lr_mult={encoder: 1}' --arm 'train.lr_mult={encoder: 0.1}'

Each ``--arm`` is a set of ``KEY=VALUE`` overrides (``;``-separated) applied to the training on top
of the experiment's config; every arm runs at every step count on the same packed data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from run import ROOT, report, row, write

from mm1.config.readers import read_yaml
from mm1.study import Study

SEQUENCES = 48  # caption sequences the loss gap is measured on


def study() -> Study:
    data = read_yaml(ROOT / "config/default.yaml") | read_yaml(ROOT / "config/study.yaml", "study file")
    return Study(data, "config/study.yaml")


def mm1(*args: str) -> float:
    """Wall seconds of one ``mm1`` command (it must succeed)."""
    t0 = time.perf_counter()
    done = subprocess.run(["mm1", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"mm1 {args[0]} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def caption_loss(ckpt: Path, packed: Path, tokenizer: Path) -> dict[str, float]:
    """Mean caption-token loss of the first SEQUENCES caption sequences: real, shuffled, zero images."""
    from mm1.config import ParallelConfig
    from mm1.data.batches import PackedData
    from mm1.data.tokenizer import TextTokenizer
    from mm1.models.mm1_model import MM1Model
    from mm1.parallel.setup import distributed
    from mm1.train import checkpoint

    tok = TextTokenizer(tokenizer)
    mc = checkpoint.read_meta(ckpt)["model"]
    with distributed(ParallelConfig(), seed=0):
        model = MM1Model(mc, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
        checkpoint.load_into(model, ckpt)
        model.eval()
        data = PackedData.load(packed, mc.decoder.seq_length, mc.encoder.image_size)
        sources = pl.read_parquet(packed, columns=["source"])["source"].to_list()
        batch = data.batch(np.array([i for i, s in enumerate(sources) if s == "caption"][:SEQUENCES]))
        images = batch["images"]
        variants = {
            "real": images,
            "shuffled": images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))],
            "zero": torch.zeros_like(images),
        }
        out = {}
        with torch.no_grad():
            for name, ims in variants.items():
                loss = model(batch["tokens"], ims, labels=batch["labels"])
                out[name] = float((loss * batch["loss_mask"]).sum() / batch["loss_mask"].sum())
    return out


def measure(st: Study, exp: str, steps: int, scratch: Path, arm: str = "") -> dict:
    inputs = json.loads((ROOT / f"results/train/{exp}/provenance.json").read_text())["inputs"]
    tokenizer = inputs["tokenizer"]["path"]
    sets = ["--set", f"train.steps={steps}", "--set", f"train.warmup_steps={max(1, steps // 10)}"]
    folder = scratch / f"{exp}-{steps}"
    extra = [x for kv in arm.split(";") if kv.strip() for x in ("--set", kv.strip())]
    run = folder / ("train" + (f"-{hashlib.sha256(arm.encode()).hexdigest()[:8]}" if arm else ""))
    manifest = json.loads((ROOT / inputs["packed"]["path"]).with_name("provenance.json").read_text())
    pack_s = 0.0 if (folder / "pack/train.parquet").exists() else mm1("pack", "--config-json", st.stage_json("pack", exp), *sets, "--manifest",
                 manifest["inputs"]["manifest"]["path"], "--tokenizer", tokenizer, "--out", str(folder / "pack"))  # fmt: skip
    train_s = mm1("train", "--config-json", st.stage_json("train", exp), *sets, *extra,
                  "--init-encoder", inputs["init_encoder"]["path"], "--init-decoder", inputs["init_language_model"]["path"],
                  "--packed", str(folder / "pack/train.parquet"), "--tokenizer", tokenizer, "--out", str(run))  # fmt: skip
    eval_s = mm1("eval", "run", "--config-json", st.stage_json("eval", exp), "--set", "eval.num_examples=1",
                 "--data", str(Path(manifest["inputs"]["manifest"]["path"]).parent), "--tokenizer", tokenizer,
                 "--checkpoint", str(run / "checkpoint"), "--out", str(run / "eval"))  # fmt: skip
    zero = json.loads((run / "eval/metrics.json").read_text())["0shot"]
    loss = caption_loss(run / "checkpoint", folder / "pack/train.parquet", ROOT / tokenizer)
    return {
        "experiment": exp, "arm": arm, "steps": steps, "pack_s": pack_s, "train_s": train_s, "eval_s": eval_s,
        "average_ll": zero["average_ll"], "average_ll_shuffled": zero["average_ll_shuffled"],
        "image_gain": zero["image_gain"], "caption_loss": loss,
        "caption_loss_gap": loss["shuffled"] - loss["real"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="60,600,2000", help="comma-separated step counts")
    ap.add_argument("--exp", default="abl", help="the study experiment whose config and upstream runs are used")
    ap.add_argument(
        "--arm",
        action="append",
        default=[],
        help="training overrides KEY=VALUE;KEY=VALUE of one arm (repeatable; default: the config as is)",
    )
    ap.add_argument("--scratch", type=Path, default=ROOT / "build/image_use", help="where the runs go")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/image_use.json")
    args = ap.parse_args()
    st = study()
    arms = args.arm or [""]
    shutil.rmtree(args.scratch, ignore_errors=True)  # every pack below is this run's (arms share it)
    results = [measure(st, args.exp, int(n), args.scratch, arm) for n in args.steps.split(",") for arm in arms]
    for r in results:
        print(f"{r['arm'] or 'as configured'}: {r['steps']:>5} steps: image gain {r['image_gain']:+.2f} points (ll {r['average_ll']:.2f}), "
              f"caption loss gap {r['caption_loss_gap']:+.3f} nats; train {r['train_s']:.0f} s")  # fmt: skip
    base = results[0]

    def arm(r: dict) -> str:
        return f" [{r['arm']}]" if r["arm"] else ""

    headline = [
        row(f"image gain at {r['steps']} steps{arm(r)} (0-shot ll points; shuffled-image control in the same eval)",
            r["image_gain"], "points") for r in results
    ] + [
        row(f"caption loss gap at {r['steps']} steps{arm(r)} (shuffled - real images, training captions)",
            r["caption_loss_gap"], "nats") for r in results
    ] + [
        row(f"train time at {r['steps']} steps{arm(r)} vs {base['steps']}{arm(base)}", r["train_s"], "s",
            baseline=base["train_s"]) for r in results[1:]
    ]  # fmt: skip
    write(args.out, report("image_use", False, {"runs": results}, headline))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
