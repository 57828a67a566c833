"""Training throughput on CPU: the megatron-core path against the same model built from HF modules.

Both paths train the study's ablation-scale model (config/study.yaml ``study.common`` over the
defaults: a 2 x 128 LLaMA-style decoder over 256 positions, a 2 x 64 ViT at 32 px in 4 px patches,
an average-pool connector to 16 image tokens; vocabulary 1024, the study tokenizer's) on the same
synthetic micro-batches of 8 sequences, 4 image-caption pairs packed into each (loss on the caption
tokens), one process pinned to 2 cores, 2 torch threads, fp32:

- megatron: what ``mm1.train.trainer`` runs -- ``build`` (MM1Model: megatron GPTModel + CLIPViTModel),
  megatron DDP and optimizer (torch AdamW inside), ``get_forward_backward_func`` with the trainer's
  forward step, then ``optimizer.step()`` (grad norm, clip 1.0) and the LR scheduler; gloo, world
  size 1, with mm1's CPU compat module (``mm1.parallel.compat``) applied, as every CPU run has it;
- baseline: what a user would assemble instead from Hugging Face ``transformers`` -- CLIPVisionModel
  and LlamaForCausalLM from the same configs (``mm1.models.hf``), the same connector module, image
  embeddings put into the ``<image>`` slots with ``masked_scatter``, masked cross-entropy, torch
  AdamW (no decay on 1-D weights, as megatron), ``clip_grad_norm_(1.0)`` -- a plain PyTorch loop.

The compat module installs no process-wide TorchFunctionMode (it did before; patch 3 now gives the
megatron modules that ask for CUDA tensors their own copy of ``torch``), so neither path runs under one.

Warm-up steps, then timed steps, in rounds that alternate the paths (AB, BA, ...) so machine
noise hits both; medians per path. Reported: tokens/s (sequences x positions / step time),
images/s, their ratio (goal: megatron >= 0.8x the baseline) and a per-phase split (forward, backward,
optimizer). Where the ratio misses the goal (or with ``--profile``), torch.profiler's top operators per path.

    python bench/train_throughput.py            # full run (about 20 s on 2 cores)
    python bench/train_throughput.py --quick    # about 6 s
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from run import report, row, write  # bench/run.py: the harness's report format

from mm1.config import ModelConfig, RunConfig, load
from mm1.config.load import read_yaml
from mm1.models.connector import build_connector
from mm1.models.flops import step_flops
from mm1.models.hf import decoder_config_to_hf, encoder_config_to_hf
from mm1.models.size import optimizer_hparams
from mm1.parallel.setup import Rank
from mm1.train.optim import build_optimizer, wrap_ddp
from mm1.train.trainer import _forward_step, _step_loss, build  # the trainer's own step pieces

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.moe import moe_utils
    from transformers import CLIPVisionModel, LlamaForCausalLM

CORES = 2
ROOT = Path(__file__).resolve().parents[1]
VOCAB = 1024  # the study's tokenizer.vocab_size, a multiple of 128: megatron pads nothing
BOS, IMAGE_ID, FIRST_TEXT_ID = 1, 3, 5  # mm1's special ids: <pad> <bos> <eos> <image> <eoc>
IMAGES_PER_SEQUENCE = 4  # 4 pairs of (16 image tokens + ~47 caption tokens) fill 256 positions
GOAL = 0.8  # megatron tokens/s >= 0.8x the baseline's
COMPAT_NOTE = (  # historical context, not measured here
    "before 2026-11-27 the megatron path used megatron's unfused local attention (now mm1.models.attention's "
    "SDPA core) and a process-wide TorchFunctionMode in mm1.parallel.compat (now per-module factory copies); "
    "it measured 0.63x (bench/results at 74c8f9c) and 0.51x in a contended harness run"
)


def pin_cores() -> None:
    """One process on 2 cores, 2 torch threads: the machine the study runs on."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:CORES])
    torch.set_num_threads(CORES)


def warn_if_busy(load_before: float) -> None:
    """Other work on these cores makes torch's 2 threads wait on each other (steps 10x slower, cpu/wall ~1)."""
    if load_before > 0.5:
        print(f"warning: load average {load_before:.1f} at the start: other processes share the cores, "
              "so these times are not the model's; rerun on an idle machine", file=sys.stderr)  # fmt: skip


def ablation_config(*overrides: str) -> RunConfig:
    """The defaults with the study's ablation scale (the ``model.*`` keys of study.common) and ``overrides``."""
    common = read_yaml(ROOT / "config" / "study.yaml")["study"]["common"]
    scale = [f"{k}={v}" for k, v in common.items() if k.startswith("model.")]
    return load(None, [*scale, f"tokenizer.vocab_size={VOCAB}", "train.resume=false", *overrides])


def synthetic_batches(cfg: RunConfig, images_per_sequence: int, count: int, seed: int = 0) -> list[dict]:
    """``count`` micro-batches as ``PackedData.batch`` gives them: each sequence is <bos> then
    ``images_per_sequence`` image-caption pairs back to back (<image> x N, random caption tokens up
    to the next pair); loss on every position whose label is text; pixels uniform in [-1, 1]."""
    mc, b = cfg.model, cfg.train.micro_batch_size
    s, n, k, size = mc.decoder.seq_length, mc.connector.num_tokens, images_per_sequence, mc.encoder.image_size
    if k and (s - 1) // k <= n:
        raise ValueError(f"{k} images of {n} tokens leave no caption room in seq_length={s}; use fewer images")
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        full = torch.randint(FIRST_TEXT_ID, VOCAB, (b, s + 1), generator=gen)  # (B, S + 1)
        full[:, 0] = BOS
        for i in range(k):
            start = 1 + i * (s - 1) // k
            full[:, start : start + n] = IMAGE_ID
        labels = full[:, 1:].contiguous()
        batches.append({
            "tokens": full[:, :-1].contiguous(), "labels": labels, "loss_mask": (labels != IMAGE_ID).float(),
            "images": torch.rand(b * k, 3, size, size, generator=gen) * 2 - 1,  # (M, 3, H, W) in reading order
        })  # fmt: skip
    return batches


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- the two paths ------------------------------------------------------------------------------------
@dataclass
class _Vocab:  # what ``trainer.build`` reads of a tokenizer
    vocab_size: int = VOCAB
    image_id: int = IMAGE_ID


class Megatron:
    """The trainer's model, optimizer and one optimizer step (``trainer._train_loop``), one micro-batch."""

    def __init__(self, cfg: RunConfig, rank: Rank) -> None:
        self.cfg, self.rank = cfg, rank
        self.model = wrap_ddp(build(cfg, _Vocab()).to(rank.device), cfg.parallel)
        lr, weight_decay = optimizer_hparams(cfg, vocab_size=VOCAB)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg.train, lr, weight_decay)
        self.forward_backward = get_forward_backward_func()
        self.params = _params(self.model.module)
        self.phases: dict[str, float] = {}

    def _forward_step(self, data_iterator, model):
        t0 = time.perf_counter()
        out = _forward_step(data_iterator, model)
        self.phases["forward"] = time.perf_counter() - t0
        return out

    def step(self, batch: dict) -> float:
        tc, t0, cpu0 = self.cfg.train, time.perf_counter(), time.process_time()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        reports = self.forward_backward(
            forward_step_func=self._forward_step, data_iterator=iter([batch]), model=[self.model],
            num_microbatches=1, seq_length=self.cfg.model.decoder.seq_length,
            micro_batch_size=tc.micro_batch_size, forward_only=False,
        )  # fmt: skip
        t1 = time.perf_counter()
        self.optimizer.step()
        self.scheduler.step(increment=1)
        t2 = time.perf_counter()
        loss, _ = _step_loss(reports, self.rank, images=len(batch["images"]))
        self.loss_tokens = int(sum(r["lm loss"][1] for r in reports))
        self.phases |= {
            "backward": t1 - t0 - self.phases["forward"],
            "optimizer": t2 - t1,
            "step": time.perf_counter() - t0,
            "cpu": time.process_time() - cpu0,
        }
        if self.cfg.model.moe.enabled:
            moe_utils.clear_aux_losses_tracker()  # the trainer's MoEStats.collect() does this after each step
        return loss


class HFModel(torch.nn.Module):
    """The same model from ``transformers`` classes: CLIP vision tower -> connector -> Llama."""

    def __init__(self, mc: ModelConfig) -> None:
        super().__init__()
        enc = mc.encoder.model_copy(update={"class_token": True})  # HF's CLIP always has one; dropped below
        self.vision = CLIPVisionModel(encoder_config_to_hf(enc))
        self.connector = build_connector(mc.connector, enc.hidden_size, enc.grid, mc.decoder.hidden_size)
        self.llm = LlamaForCausalLM(decoder_config_to_hf(mc.decoder, VOCAB))

    def forward(self, tokens, labels, loss_mask, images) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the masked per-token losses, number of loss tokens)."""
        embeds = self.llm.get_input_embeddings()(tokens)  # (B, S, H)
        if len(images):
            patches = self.vision(pixel_values=images).last_hidden_state[:, 1:]  # (M, P, Hv)
            image_tokens = self.connector(patches)  # (M, N, H)
            embeds = embeds.masked_scatter((tokens == IMAGE_ID).unsqueeze(-1), image_tokens)
        logits = self.llm(inputs_embeds=embeds, use_cache=False).logits  # (B, S, V)
        per_token = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none")
        mask = loss_mask.flatten()
        return (per_token * mask).sum(), mask.sum()


class Baseline:
    """The HF model with a plain PyTorch training step (AdamW, clip 1.0, warm-up LR)."""

    def __init__(self, cfg: RunConfig) -> None:
        tc = cfg.train
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tc.seed)
            self.model = HFModel(cfg.model)
        lr, weight_decay = optimizer_hparams(cfg, vocab_size=VOCAB)
        params = list(self.model.parameters())
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]  # fmt: skip
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(tc.adam_beta1, tc.adam_beta2), eps=1e-8)
        warmup = max(tc.warmup_steps, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        self.clip, self.params = tc.clip_grad, _params(self.model)
        self.phases: dict[str, float] = {}

    def step(self, batch: dict) -> float:
        t0, cpu0 = time.perf_counter(), time.process_time()
        self.optimizer.zero_grad(set_to_none=True)
        total, count = self.model(**batch)
        loss = total / count.clamp(min=1)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.scheduler.step()
        t3 = time.perf_counter()
        value, self.loss_tokens = loss.item(), int(count)
        self.phases = {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2,
                       "step": time.perf_counter() - t0, "cpu": time.process_time() - cpu0}  # fmt: skip
        return value


# -- timing ---------------------------------------------------------------------------------------------
def time_rounds(paths: dict[str, object], batches: list[dict], rounds: int, warm: int, steps: int) -> dict[str, dict]:
    """Per path: warm-up steps then timed steps, in ``rounds`` that alternate the order of the paths.

    Returns per path the step times (s), the phase times of each timed step, the losses of every step.
    """
    out = {name: {"step_s": [], "phases": [], "losses": [], "round_median_s": []} for name in paths}
    order, i = list(paths), 0
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            path, rec = paths[name], out[name]
            times = []
            for j in range(warm + steps):
                rec["losses"].append(path.step(batches[i % len(batches)]))
                i += 1
                if j >= warm:
                    times.append(path.phases["step"])
                    rec["phases"].append(dict(path.phases))
            rec["step_s"] += times
            rec["round_median_s"].append(statistics.median(times))
    return out


def summarise(rec: dict, cfg: RunConfig, images_per_sequence: int) -> dict:
    """Median step time -> tokens/s, images/s, GFLOP/s (matmul FLOPs by formula) and the phase split."""
    tc, s = cfg.train, cfg.model.decoder.seq_length
    step = statistics.median(rec["step_s"])
    cpu = statistics.median(p["cpu"] for p in rec["phases"])  # CPU seconds of all threads: less hit by other work
    phases = {k: statistics.median(p[k] for p in rec["phases"]) for k in ("forward", "backward", "optimizer")}
    phases["other"] = max(step - sum(phases.values()), 0.0)
    flops = step_flops(cfg, images_per_sequence, VOCAB)["total"]
    return {
        "step_s": step, "tokens_per_s": tc.global_batch_size * s / step,
        "images_per_s": tc.global_batch_size * images_per_sequence / step, "gflop_per_s": flops / step / 1e9,
        "cpu_s_per_step": cpu, "tokens_per_cpu_s": tc.global_batch_size * s / cpu, "cpu_per_wall": cpu / step,
        "step_s_all": [round(t, 4) for t in rec["step_s"]], "round_median_s": [round(t, 4) for t in rec["round_median_s"]],
        "phases_s": {k: round(v, 5) for k, v in phases.items()},
        "phases_share": {k: round(v / step, 3) for k, v in phases.items()},
        "loss_first": rec["losses"][0], "loss_last": rec["losses"][-1],
    }  # fmt: skip


# -- profile --------------------------------------------------------------------------------------------
CATEGORIES = (  # (category, substrings of an aten op name), first match wins
    ("loss (log-softmax, NLL)", ("log_softmax", "nll_loss", "cross_entropy")),
    ("attention (scores, softmax, mask, A.V)", ("scaled_dot_product", "softmax", "bmm", "masked_fill", "triu")),
    ("linear layers (mm, addmm)", ("::mm", "addmm", "::matmul", "::linear")),
    ("copies, layout, indexing", ("copy_", "cat", "clone", "contiguous", "_to_copy", "stack", "index", "scatter",
                                  "gather", "where", "masked_scatter", "split", "chunk", "fill_", "zero_")),
    ("norms (LayerNorm, RMSNorm)", ("layer_norm", "rms_norm")),
    ("optimizer and grad-norm ops", ("addcdiv", "lerp", "sqrt", "_foreach", "linalg_vector_norm")),
    ("patch convolution", ("convolution",)),
)  # fmt: skip


def _category(op: str) -> str:
    if not op.startswith(("aten::", "c10d::", "gloo:")):
        return "Python in record_function ranges (self time)"
    return next((name for name, keys in CATEGORIES if any(k in op for k in keys)), "other ops (elementwise, ...)")


def profile(path, batches: list[dict], steps: int, top: int = 12) -> dict:
    """torch.profiler over ``steps`` steps: self CPU time per operator and per category, and how much
    of the wall time no operator accounts for (Python, module calls, dispatch)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    path.step(batches[0])
    t0 = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for i in range(steps):
            path.step(batches[i % len(batches)])
    wall = (time.perf_counter() - t0) / steps
    events = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0),
                    key=lambda e: e.self_cpu_time_total, reverse=True)  # fmt: skip
    ms = {e.key: e.self_cpu_time_total / 1e3 / steps for e in events}  # self ms per step
    categories: dict[str, float] = {}
    for op, t in ms.items():
        categories[_category(op)] = categories.get(_category(op), 0.0) + t
    in_ops = sum(t for op, t in ms.items() if not _category(op).startswith("Python"))
    categories["outside operators (Python, dispatch, modes)"] = max(1e3 * wall - in_ops - categories.get(
        "Python in record_function ranges (self time)", 0.0), 0.0)  # fmt: skip
    ops = [{"op": e.key, "self_ms_per_step": round(ms[e.key], 2), "share_of_step": round(ms[e.key] / 1e3 / wall, 3),
            "calls_per_step": e.count // steps} for e in events[:top]]  # fmt: skip
    shaped = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: e.self_cpu_time_total, reverse=True)
    by_shape = [{"op": e.key, "input_shapes": str(e.input_shapes), "calls_per_step": e.count // steps,
                 "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 2)} for e in shaped[:top]]  # fmt: skip
    return {
        "profiled_step_s": wall, "outside_operators_share": round(1 - in_ops / 1e3 / wall, 3),
        "ms_per_step_by_category": {k: round(v, 2) for k, v in sorted(categories.items(), key=lambda kv: -kv[1])},
        "top_ops": ops, "top_ops_by_input_shape": by_shape,
    }  # fmt: skip


def compare_profiles(megatron: dict, baseline: dict) -> list[dict]:
    """Per category: megatron ms - baseline ms per profiled step, largest first (where the time goes)."""
    a, b = megatron["ms_per_step_by_category"], baseline["ms_per_step_by_category"]
    gap = 1e3 * (megatron["profiled_step_s"] - baseline["profiled_step_s"])
    rows = [{"category": k, "megatron_ms": a.get(k, 0.0), "baseline_ms": b.get(k, 0.0),
             "extra_ms": round(a.get(k, 0.0) - b.get(k, 0.0), 2),
             "share_of_gap": round((a.get(k, 0.0) - b.get(k, 0.0)) / gap, 3) if gap > 0 else None}
            for k in dict.fromkeys([*a, *b])]  # fmt: skip
    return sorted(rows, key=lambda r: -r["extra_ms"])


# -- the run ------------------------------------------------------------------------------------------
def measure(cfg: RunConfig, rank: Rank, quick: bool, force_profile: bool) -> dict:
    rounds, warm, steps = (2, 1, 3) if quick else (6, 2, 6)
    batches = synthetic_batches(cfg, IMAGES_PER_SEQUENCE, 4)
    t0 = time.perf_counter()
    megatron = Megatron(cfg, rank)
    t1 = time.perf_counter()
    baseline = Baseline(cfg)
    t2 = time.perf_counter()
    timed = time_rounds({"megatron": megatron, "baseline": baseline}, batches, rounds, warm, steps)
    out = {name: summarise(rec, cfg, IMAGES_PER_SEQUENCE) for name, rec in timed.items()}
    out["ratio_megatron_to_baseline"] = out["baseline"]["step_s"] / out["megatron"]["step_s"]
    out["build_s"] = {"megatron": round(t1 - t0, 2), "baseline": round(t2 - t1, 2)}
    out["compat_note"] = COMPAT_NOTE

    if out["ratio_megatron_to_baseline"] < GOAL or force_profile:
        n = 2 if quick else 4
        profiles = {"megatron": profile(megatron, batches, n), "baseline": profile(baseline, batches, n)}
        out["where_the_time_goes"] = profiles | {"megatron_minus_baseline": compare_profiles(**profiles)}
    out["model"] = {
        "params": {"megatron": megatron.params, "baseline": baseline.params,
                   "relative_difference": baseline.params / megatron.params - 1},
        "hf_attention": baseline.model.llm.config._attn_implementation,
        "hf_vision_attention": baseline.model.vision.config._attn_implementation,
        "loss_tokens_per_batch": [int(b["loss_mask"].sum()) for b in batches],
        "images_per_batch": [len(b["images"]) for b in batches],
    }  # fmt: skip
    out["schedule"] = {"rounds": rounds, "warmup_steps_per_round": warm, "timed_steps_per_round": steps}
    return out


def headline(results: dict) -> list[dict]:
    meg, base = results["megatron"], results["baseline"]
    goal, met = f">= {GOAL:g}x the baseline", results["ratio_megatron_to_baseline"] >= GOAL
    what = "megatron-core + CPU compat vs HF CLIP+Llama, plain loop; 2x128 decoder, seq 256, batch 8, 4 img/seq"
    return [
        row(f"training tokens/s: {what}", meg["tokens_per_s"], "tokens/s", base["tokens_per_s"], goal, met),
        row(f"training images/s: {what}", meg["images_per_s"], "images/s", base["images_per_s"], goal, met),
        row("training tokens per CPU-second (all threads; less hit by other work), megatron vs HF",
            meg["tokens_per_cpu_s"], "tokens/cpu-s", base["tokens_per_cpu_s"]),
        row("parameters: megatron model vs HF model", results["model"]["params"]["megatron"], "params",
            results["model"]["params"]["baseline"]),
    ]  # fmt: skip


def _print(results: dict) -> None:
    head = f"{'path':<10}{'step s':>8}{'tokens/s':>10}{'images/s':>10}{'GFLOP/s':>9}{'cpu/wall':>9}  fwd/bwd/opt/other"
    print(head + "\n" + "-" * len(head))
    for name in ("megatron", "baseline"):
        r = results[name]
        shares = "/".join(f"{v:.2f}" for v in r["phases_share"].values())
        print(f"{name:<10}{r['step_s']:>8.3f}{r['tokens_per_s']:>10.0f}{r['images_per_s']:>10.1f}"
              f"{r['gflop_per_s']:>9.2f}{r['cpu_per_wall']:>9.2f}  {shares}")  # fmt: skip
    m = results["model"]
    print(f"ratio megatron/baseline (tokens/s): {results['ratio_megatron_to_baseline']:.2f} (goal >= {GOAL:g})")
    print(f"parameters: megatron {m['params']['megatron']:,}, HF {m['params']['baseline']:,} "
          f"({100 * m['params']['relative_difference']:+.1f}%); HF attention: {m['hf_attention']}")  # fmt: skip
    print(results["compat_note"])
    where = results.get("where_the_time_goes")
    if where:
        steps = {k: where[k]["profiled_step_s"] for k in ("megatron", "baseline")}
        print(f"\nwhere the time goes (torch.profiler, ms per step; profiled steps: megatron {steps['megatron']:.3f} s,"
              f" baseline {steps['baseline']:.3f} s)")  # fmt: skip
        print(f"  {'category':<46}{'megatron':>9}{'HF':>8}{'extra':>8}{'of gap':>8}")
        for r in where["megatron_minus_baseline"]:
            gap = f"{100 * r['share_of_gap']:.0f}%" if r["share_of_gap"] is not None else "-"
            print(
                f"  {r['category'][:46]:<46}{r['megatron_ms']:>9.1f}{r['baseline_ms']:>8.1f}{r['extra_ms']:>8.1f}{gap:>8}"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    p.add_argument("--profile", action="store_true", help="profile both paths even when the goal is met")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_throughput.json")
    args = p.parse_args(argv)
    pin_cores()
    from mm1.parallel.setup import distributed

    t0, load_before = time.perf_counter(), os.getloadavg()[0]
    cfg = ablation_config()
    with distributed(cfg.parallel, cfg.train.seed) as rank:
        results = measure(cfg, rank, args.quick, args.profile)
    setup = {
        "model": cfg.model.model_dump(mode="json"), "vocab_size": VOCAB, "images_per_sequence": IMAGES_PER_SEQUENCE,
        "micro_batch_size": cfg.train.micro_batch_size, "global_batch_size": cfg.train.global_batch_size,
        "precision": "fp32", "torch_threads": torch.get_num_threads(), "wall_s": round(time.perf_counter() - t0, 1),
        "tokens_are": "positions: sequences x seq_length per step (image tokens included)",
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
    }  # fmt: skip
    warn_if_busy(load_before)
    data = report("train_throughput", args.quick, results, headline(results), setup=setup)
    write(args.out, data)
    _print(results)
    print(f"wrote {args.out} ({setup['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
