"""The planner's activation memory against what one GPU actually keeps (`mm1 plan`'s largest term).

For each (preset, recompute) the MM1 model is built in bf16 (seeded random weights) and moved to
the GPU; one micro-batch (1 sequence of seq_length tokens with
data.mixture.max_images_per_sequence images) runs forward with labels, then backward, and

- ``kept_gb``: memory allocated after the forward minus before it: the activations kept for backward;
- ``peak_gb``: the peak during forward + backward minus the memory before the forward (adds the
  bf16 gradients of every parameter, ``grads_gb``, and the backward's transients; under full
  recomputation compare ``peak_gb - grads_gb`` with the plan, which counts the recomputed layer);
- ``planned_gb``: :func:`mm1.plan.estimate.stage_memory`'s activations for the same layout
  (1 GPU, TP 1, PP 1, micro-batch 1), and its parts.

megatron's local (non-Transformer-Engine) layers run, as the planner assumes: unfused attention
that keeps its score matrices. Writes bench/results/plan_memory.json. Needs a CUDA GPU.

    python bench/plan_memory.py                               # mm1-ablation x none/selective/full, mm1-3b x selective/full
    python bench/plan_memory.py --cases mm1-ablation:full     # one case
    python bench/plan_memory.py --images 0                    # text only: the decoder alone
    python bench/plan_memory.py --replan A.json B.json        # no GPU: earlier measurements, planned anew
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch

from mm1.config import ParallelConfig
from mm1.config.presets import load_preset
from mm1.models.megatron_config import MegatronLayout, use_transformer_engine
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import distributed
from mm1.plan.estimate import GB, layer_activations, stage_memory
from mm1.plan.facts import facts
from mm1.plan.layout import ClusterLayout

CASES = ["mm1-ablation:none", "mm1-ablation:selective", "mm1-ablation:full", "mm1-3b:selective", "mm1-3b:full"]
IMAGE_ID = 3


def planned(name: str, recompute: str, images: int | None = None) -> dict[str, float]:
    """The planner's activations of one micro-batch on 1 GPU, by part; ``images`` per sequence
    (default: data.mixture.max_images_per_sequence; 0 = text only, the decoder alone)."""
    cfg = load_preset(name)
    f = facts(cfg)
    n = f.images if images is None else images
    rc = recompute
    parts = {
        "decoder_gb": f.layers * layer_activations(f.seq, 1, f.hidden, f.heads, 1, rc, f.attention, f.mlp) / GB,
        "encoder_gb": f.enc_layers
        * layer_activations(f.enc_tokens, n, f.enc_hidden, f.enc_heads, 1, rc, f.enc_attention, f.enc_mlp)
        / GB,
        "connector_gb": f.connector_bytes * n / GB,
        "logits_gb": 6 * f.seq * f.vocab / GB,
    }
    parts["planned_gb"] = sum(parts.values())
    if rc == "full":  # the layer being recomputed
        layers = [layer_activations(f.seq, 1, f.hidden, f.heads, 1, "none", f.attention, f.mlp)]
        layers += (
            [layer_activations(f.enc_tokens, n, f.enc_hidden, f.enc_heads, 1, "none", f.enc_attention, f.enc_mlp)]
            if n
            else []
        )
        parts["planned_gb"] += max(layers) / GB
    parts["grads_gb"] = 2 * f.total / GB  # bf16 gradients: part of the measured peak, not of the activations
    if n == f.images:  # the same number by the planner's own path
        lay = ClusterLayout(1, 1, 1, 1, 1, 1, cfg.train.global_batch_size, recompute, False)
        assert abs(stage_memory(f, lay, 0).activations - parts["planned_gb"]) < 1e-9
    return parts


def measure(name: str, recompute: str, images: int | None = None) -> dict[str, float]:
    cfg = load_preset(name)
    m, vocab = cfg.model, cfg.tokenizer.vocab_size
    seq, tokens_per_image = m.decoder.seq_length, m.connector.num_tokens
    images = cfg.data.mixture.max_images_per_sequence if images is None else images
    with distributed(ParallelConfig(), seed=0):
        # megatron draws the weights on the CPU (use_cpu_initialization), in bf16
        model = MM1Model(
            m, vocab_size=vocab, image_token_id=IMAGE_ID, layout=MegatronLayout(bf16=True, recompute=recompute)
        )
        model = model.to(torch.bfloat16).cuda().train()
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(IMAGE_ID + 1, vocab, (1, seq), generator=g)
        for i in range(images):  # image slots after a short caption each
            start = 1 + i * (tokens_per_image + 8)
            tokens[0, start : start + tokens_per_image] = IMAGE_ID
        pixels = torch.randn(images, 3, m.encoder.image_size, m.encoder.image_size, generator=g)
        tokens, pixels = tokens.cuda(), pixels.cuda().to(torch.bfloat16)
        labels = torch.roll(tokens, -1, dims=1)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loss = model(tokens, pixels, labels=labels).float().mean()
        torch.cuda.synchronize()
        kept = torch.cuda.memory_allocated() - before
        loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        finite = bool(torch.isfinite(loss))
        del model, loss
        torch.cuda.empty_cache()
    return {"kept_gb": kept / GB, "peak_gb": peak / GB, "loss_finite": finite}


def replan(sources: list[Path]) -> dict:
    """The measured rows of earlier results files, with the planned columns of the current planner."""
    runs, rows = [], []
    for source in sources:
        data = json.loads(source.read_text())
        runs.append({k: data[k] for k in ("when", "gpu", "torch", "transformer_engine", "python")})
        for old in data["rows"]:
            row = {**old, **planned(old["preset"], old["recompute"], old.get("images"))}
            if "kept_gb" in row:
                row["kept_over_planned"] = row["kept_gb"] / row["planned_gb"]
            rows.append(row)
    return {"what": WHAT, "measured": runs, "planned_by": "the current mm1.plan (--replan)", "rows": rows}


WHAT = "activation memory of one micro-batch on one GPU: measured (kept after forward, peak) vs mm1.plan"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="*", default=CASES, help="PRESET:RECOMPUTE ...")
    p.add_argument("--images", type=int, help="images per sequence (default: the preset's most; 0: the decoder alone)")
    p.add_argument("--replan", nargs="+", type=Path, metavar="RESULTS", help="no GPU: re-plan earlier results files")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "plan_memory.json")
    args = p.parse_args()
    if args.replan:
        result = replan(args.replan)
    else:
        result = run(args.cases, args.images)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def run(cases: list[str], images: int | None) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("bench/plan_memory.py needs a CUDA GPU (or --replan)")
    rows = []
    for case in cases:
        name, recompute = case.split(":")
        row = {"preset": name, "recompute": recompute, "images": images, **planned(name, recompute, images)}
        try:
            t0 = time.perf_counter()
            row.update(measure(name, recompute, images))
            row["seconds"] = time.perf_counter() - t0
            row["kept_over_planned"] = row["kept_gb"] / row["planned_gb"]
        except torch.OutOfMemoryError as exc:
            row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {
        "what": WHAT,
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformer_engine": use_transformer_engine(),
        "python": platform.python_version(),
        "rows": rows,
    }


if __name__ == "__main__":
    main()
