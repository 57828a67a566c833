"""Model FLOPs utilisation (MFU) of MM1 training on one GPU.

What runs: the ``mm1-ablation`` preset -- the 1.2B decoder (llm-1.2b), ViT-L/14 at 336 px and a
C-Abstractor with 144 image tokens -- in bf16 at seq_length 4096, with
data.mixture.max_images_per_sequence (16) images in every sequence, on one GPU (TP = PP = EP = 1).
Model and optimizer are the trainer's: MM1Model + init_weights + Float16Module (the six lines of
mm1.train.trainer.build, repeated here because importing the trainer pulls in polars and submitit,
which the GPU image lacks), megatron DDP and mixed-precision Adam (mm1.train.optim), and megatron's
no-pipelining schedule. The batch is synthetic (random tokens and pixels); speed does not depend on it.

A step is 16 sequences (mm1-ablation's per-GPU share: 512 sequences over DP 32) in micro-batches of
the largest size that fits: 1, 2, 4, ... each tried with one real step until the first
torch.OutOfMemoryError. Activation recomputation starts at the first level (none, selective,
full) at which mm1.plan says micro-batch 1 fits this GPU, and moves on after an out-of-memory at
micro-batch 1.

FLOPs per step: mm1.models.flops.step_flops (matmuls only; backward = 2 x forward; causal attention
over the full S x S square, as PaLM's MFU counts it, though the fused kernel skips the masked half);
recomputation is not counted (model FLOPs, not hardware FLOPs). MFU = those FLOPs / median step
time / the GPU's dense BF16 peak (H100 SXM and H200 989 TFLOP/s, A100 312; --peak-tflops overrides).
The layer spec is the product's choice, mm1.models.megatron_config.use_transformer_engine()
(decoder only: the ViT is always megatron's local spec); the result records which ran.

With ``--levers`` the same shapes (the chosen recompute and micro-batch, the same synthetic batch)
are timed again with each speed lever on (parallel.fusions, parallel.attention_backend=cudnn,
parallel.compile_layers, all three together) and with the recompute lever off (selective against
none): ``results.levers`` holds each lever's off and on runs, MFU and speed-up; mm1.plan.estimate.
measured_mfu reads them. A lever whose turn comes after the time budget is recorded unmeasured.

    python bench/gpu_mfu.py               # a CUDA GPU: bench/results/gpu_mfu.json
    python bench/gpu_mfu.py --levers all  # and each lever off vs on (gpu_check.sh passes this)
    python bench/gpu_mfu.py --dry-run     # anywhere: full-size FLOPs, parameters and planned micro-batches,
                                          # then 2 steps of a tiny model on CPU through the same code
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import statistics
import time
import warnings
from importlib import metadata
from pathlib import Path

import torch

from mm1 import atomic, provenance
from mm1.config import ParallelConfig, RunConfig
from mm1.config.load import apply_overrides, from_dict
from mm1.config.presets import preset_data
from mm1.models.flops import step_flops
from mm1.models.init import init_weights
from mm1.models.megatron_config import MegatronLayout, levers, use_transformer_engine
from mm1.models.mm1_model import MM1Model
from mm1.models.size import count_model, optimizer_hparams
from mm1.parallel.setup import distributed
from mm1.plan.estimate import DEFAULT_MFU, stage_memory
from mm1.plan.facts import facts
from mm1.plan.gpus import GPUS
from mm1.plan.layout import ClusterLayout
from mm1.train.optim import build_optimizer, use_bf16, wrap_ddp

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.module import Float16Module

PRESET = "mm1-ablation"
IMAGE_ID = 3  # any id below the vocabulary's random text ids: the batch is synthetic
SEQUENCES_PER_STEP = 16  # mm1-ablation: 512 sequences per step over DP 32 = 16 per GPU
MICRO_BATCHES = (1, 2, 4, 8, 16)
RECOMPUTE = ("none", "selective", "full")
GOAL_MFU = 0.5
# --levers: each lever's (off, on) overrides of the timed run's config; [] is the timed (levers-off) run itself
LEVERS = {
    "recompute": (["parallel.recompute=selective"], ["parallel.recompute=none"]),  # none where the planner fits it
    "fusions": ([], ["parallel.fusions=true"]),
    "attention_backend": ([], ["parallel.attention_backend=cudnn"]),
    "compile_layers": ([], ["parallel.compile_layers=true"]),
    "all": (
        [], ["parallel.fusions=true", "parallel.attention_backend=cudnn", "parallel.compile_layers=true"]
    ),
}  # fmt: skip
GB = 1e9
OUT = Path(__file__).parent / "results" / "gpu_mfu.json"
# Dense (no 2:4 sparsity) BF16 tensor-core peaks in TFLOP/s; the first name in torch.cuda.get_device_name() wins.
PEAKS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
PLAN_GPUS = (("H200", "h200-141gb"), ("H100", "h100-80gb"), ("A100-SXM4-40GB", "a100-40gb"), ("A100", "a100-80gb"))
# The dry run's CPU model: the preset's shape of model (ViT with a class token, C-Abstractor, RoPE +
# SwiGLU decoder) at toy sizes: 28 px / 7 px patches = 4 x 4 grid -> 4 image tokens, 2 images per sequence.
TINY = [
    *("model.encoder.image_size=28", "model.encoder.patch_size=7", "model.encoder.hidden_size=32"),
    *("model.encoder.num_layers=1", "model.encoder.num_attention_heads=2", "model.encoder.ffn_hidden_size=64"),
    *("model.connector.num_tokens=4", "model.connector.depth=1", "model.decoder.num_layers=2"),
    *("model.decoder.hidden_size=64", "model.decoder.num_attention_heads=4", "model.decoder.ffn_hidden_size=128"),
    *("model.decoder.seq_length=64", "tokenizer.vocab_size=320", "data.mixture.max_images_per_sequence=2"),
]
SPEC_NOTES = {
    "local": "megatron's local spec with mm1's SDPA core attention (mm1.models.attention): on CUDA torch runs "
    "it as a fused flash / memory-efficient kernel that keeps no S x S scores; norms, RoPE and SwiGLU run as "
    "separate PyTorch kernels. Transformer Engine would also fuse the norms into the next GEMM and use cuDNN "
    "attention; the ViT stays on the local spec (with SDPA) either way (mm1.models.encoder).",
    "transformer_engine": "Transformer Engine for the decoder: fused causal attention without stored scores, "
    "norms fused into the GEMMs. The local spec would store the S x S scores (62 GB of activations for one "
    "sequence with 16 images, bench/results/plan_memory.json), which forces recomputation or a smaller "
    "micro-batch, and run attention as memory-bound unfused kernels.",
}


# --- what is measured: config, FLOPs, parameters, the planner's micro-batches ---------------------


def bench_config(
    micro_batch: int = 1,
    recompute: str = "none",
    sequences: int = SEQUENCES_PER_STEP,
    overrides: tuple[str, ...] | list[str] = (),
    preset: str = PRESET,
) -> RunConfig:
    """The preset on one GPU in bf16: ``sequences`` per step in micro-batches of ``micro_batch``."""
    one_gpu = [
        *("parallel.world_size=1", "parallel.gpus_per_node=null", "parallel.tp=1", "parallel.pp=1", "parallel.ep=1"),
        *("parallel.distributed_optimizer=false", f"parallel.recompute={recompute}", "train.precision=bf16"),
        *(f"train.micro_batch_size={micro_batch}", f"train.global_batch_size={sequences}"),
    ]
    return from_dict(apply_overrides(preset_data(preset), [*one_gpu, *overrides]), f"{preset} on one GPU")


def images_per_sequence(cfg: RunConfig) -> int:
    return cfg.data.mixture.max_images_per_sequence


def parameters(cfg: RunConfig) -> dict[str, int]:
    """Parameters by part, as instantiated (mm1.models.size.count_model)."""
    return {part: n.total for part, n in count_model(cfg.model, cfg.tokenizer.vocab_size).items()}


def flops(cfg: RunConfig) -> dict[str, dict[str, float]]:
    """Model FLOPs of one sequence and of one step (train.global_batch_size sequences), by part."""
    step = step_flops(cfg, images_per_sequence(cfg))
    return {"per_sequence": {k: v / cfg.train.global_batch_size for k, v in step.items()}, "per_step": step}


def mfu(flops_per_step: float, step_seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak."""
    return flops_per_step / step_seconds / (peak_tflops * 1e12)


def peak_tflops(device_name: str) -> float | None:
    return next((peak for name, peak in PEAKS if name in device_name), None)


def planned_micro_batches(cfg: RunConfig, memory_gb: float) -> dict[str, dict]:
    """mm1.plan's memory per GPU for each micro-batch size and recompute level, and the largest
    micro-batch that fits ``memory_gb`` (0: none)."""
    f = facts(cfg)
    out = {}
    for rc in RECOMPUTE:
        need = {}
        for mb in MICRO_BATCHES:
            lay = ClusterLayout(1, 1, 1, 1, 1, mb, max(mb, cfg.train.global_batch_size), rc, False)
            need[mb] = stage_memory(f, lay, 0).total
        fit = [mb for mb, gb in need.items() if gb <= memory_gb]
        out[rc] = {"memory_gb": {str(mb): round(gb, 1) for mb, gb in need.items()}, "largest": max(fit, default=0)}
    return out


# --- the trainer's model, step and timing --------------------------------------------------------


def build(cfg: RunConfig, device: torch.device):
    """(DDP model, optimizer, scheduler) as mm1.train.trainer builds them for one process."""
    layout = MegatronLayout.of(cfg.parallel, bf16=use_bf16(cfg.train.precision))
    model = MM1Model(cfg.model, vocab_size=cfg.tokenizer.vocab_size, image_token_id=IMAGE_ID, layout=layout)
    init_weights(model, cfg.train.seed)
    if layout.bf16:
        model = Float16Module(model.config, model)
    model = wrap_ddp(model.to(device), cfg.parallel)
    lr, weight_decay = optimizer_hparams(cfg)
    optimizer, scheduler = build_optimizer(model, cfg.train, lr, weight_decay)
    return model, optimizer, scheduler


def synthetic_batch(cfg: RunConfig, micro_batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``micro_batch`` sequences of random text, each holding max_images_per_sequence images (a run of
    num_tokens <image> ids after every 8 text tokens) of random pixels."""
    m, per = cfg.model, images_per_sequence(cfg)
    seq, n, size = m.decoder.seq_length, m.connector.num_tokens, m.encoder.image_size
    if 8 + per * (n + 8) > seq:
        raise ValueError(f"{per} images of {n} tokens do not fit a {seq}-token sequence; lower --images")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(IMAGE_ID + 1, cfg.tokenizer.vocab_size, (micro_batch, seq), generator=g)
    for i in range(per):
        tokens[:, 8 + i * (n + 8) : 8 + i * (n + 8) + n] = IMAGE_ID
    labels = torch.roll(tokens, -1, dims=1)
    batch = {
        "tokens": tokens,
        "labels": labels,
        "loss_mask": (labels != IMAGE_ID).float(),
        "images": torch.randn(micro_batch * per, 3, size, size, generator=g),  # fp32, as the loader gives them
    }
    return {k: v.to(device) for k, v in batch.items()}


def _loss_func(loss_mask: torch.Tensor, per_token: torch.Tensor):
    """mm1.train.trainer._loss_func: (sum of token losses, token count, report)."""
    total = (per_token.float() * loss_mask).sum()
    count = loss_mask.sum()
    return total, count.to(torch.int), {"lm loss": torch.stack([total.detach(), count])}


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    return model(batch["tokens"], batch["images"], batch["labels"]), functools.partial(_loss_func, batch["loss_mask"])


def train_step(model, optimizer, scheduler, cfg: RunConfig, batch: dict, accumulation: int) -> float:
    """One optimizer step over ``accumulation`` micro-batches (the same batch each time); mean token loss."""
    model.zero_grad_buffer()
    optimizer.zero_grad()
    reports = get_forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=iter([batch] * accumulation),
        model=[model],
        num_microbatches=accumulation,
        seq_length=cfg.model.decoder.seq_length,
        micro_batch_size=len(batch["tokens"]),
        forward_only=False,
    )
    optimizer.step()
    scheduler.step(increment=1)
    stats = sum(r["lm loss"].float() for r in reports)
    return (stats[0] / stats[1].clamp(min=1)).item()


def timed(fn):
    """(fn(), seconds): CUDA events around it on a GPU, the wall clock on CPU."""
    if not torch.cuda.is_available():
        t0 = time.perf_counter()
        value = fn()
        return value, time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    value = fn()
    end.record()
    end.synchronize()
    return value, start.elapsed_time(end) / 1e3


def matmul_tflops(n: int = 8192, repeats: int = 10) -> float:
    """Median TFLOP/s of an n x n x n bf16 matmul on random data: the card's reachable matmul rate."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    seconds = [timed(lambda: a @ b)[1] for _ in range(repeats)]
    return 2 * n**3 / statistics.median(seconds) / 1e12


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def try_micro_batch(built, cfg: RunConfig, micro_batch: int, device: torch.device) -> dict:
    """One real step of one micro-batch: whether it fits, its peak memory and time."""
    row: dict = {"recompute": cfg.parallel.recompute, "micro_batch": micro_batch}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        batch = synthetic_batch(cfg, micro_batch, device)
        row["loss"], row["seconds"] = timed(lambda: train_step(*built, cfg, batch, 1))
        row["fits"] = True
    except torch.OutOfMemoryError as exc:
        row.update(fits=False, error=str(exc).splitlines()[0][:300])
    batch = None
    if torch.cuda.is_available():
        row["peak_gb"] = torch.cuda.max_memory_allocated() / GB
    _release_memory()
    return row


def search(levels, candidates, overrides, device, deadline: float, log) -> tuple:
    """Build at each recompute level until micro-batch 1 fits; then grow the micro-batch until the
    first out-of-memory. Returns (built model, its config for the chosen micro-batch, trials)."""
    trials = []
    for rc in levels:
        cfg = bench_config(1, rc, overrides=overrides)
        t0 = time.monotonic()
        built = build(cfg, device)
        log(f"built the model (recompute {rc}) in {time.monotonic() - t0:.0f} s")
        best = 0
        for mb in candidates:
            if best and time.monotonic() + 4 * trials[-1].get("seconds", 0) > deadline:
                log(f"micro-batch {mb}: not tried, the time budget is spent")
                break
            row = try_micro_batch(built, bench_config(mb, rc, overrides=overrides), mb, device)
            trials.append(row)
            log(json.dumps(row))
            if not row["fits"]:
                break
            best = mb
        if best:
            return built, bench_config(best, rc, overrides=overrides), trials
        built = None
        _release_memory()
    raise RuntimeError(f"micro-batch 1 fits under none of the recompute levels {list(levels)}: {trials}")


def chosen(cfg: RunConfig) -> dict:
    """What a timed run ran with: recompute, micro-batch, accumulation and the levers (parallel.*)."""
    mb = cfg.train.micro_batch_size
    return {
        "recompute": cfg.parallel.recompute,
        "micro_batch": mb,
        "accumulation": cfg.train.global_batch_size // mb,
        **levers(cfg.parallel),
    }


def time_steps(built, cfg: RunConfig, device, warmup: int, steps: int, deadline: float, log) -> dict:
    """``warmup`` + ``steps`` optimizer steps of ``built`` on ``cfg``'s synthetic batch (fewer if the
    deadline comes): their times, losses and peak memory."""
    mb = cfg.train.micro_batch_size
    accumulation = cfg.train.global_batch_size // mb
    batch = synthetic_batch(cfg, mb, device)
    warm, times, losses = [], [], []
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if i > warmup and time.monotonic() + max(times or warm) > deadline:
            log(f"stopped after {len(times)} timed steps: the time budget is spent")
            break
        loss, seconds = timed(lambda: train_step(*built, cfg, batch, accumulation))
        (warm if i < warmup else times).append(seconds)
        losses.append(loss)
        log(f"step {i + 1}: {seconds:.3f} s, loss {loss:.4f}{' (warm-up)' if i < warmup else ''}")
    if not times:  # budget too short for a timed step: the last warm-up step stands in
        times = warm[-1:]
    return {
        "chosen": chosen(cfg),
        "warmup_s": warm,
        "step_times_s": times,
        "step_time_s": statistics.median(times),
        "losses": losses,
        "max_memory_gb": torch.cuda.max_memory_allocated() / GB if torch.cuda.is_available() else None,
    }


def measure(levels, candidates, overrides, device, warmup: int, steps: int, budget_s: float, log) -> tuple:
    """Search the micro-batch, then time ``warmup`` + ``steps`` optimizer steps (fewer if the budget
    ends). Returns (the config timed, the measurements, the deadline)."""
    deadline = time.monotonic() + budget_s
    built, cfg, trials = search(levels, candidates, overrides, device, deadline, log)
    run = time_steps(built, cfg, device, warmup, steps, deadline, log)
    return cfg, {"search": trials, **run}, deadline


def lever_config(base: RunConfig, extra: list[str], overrides) -> RunConfig:
    """``base``'s shapes (micro-batch, recompute, sequences) with a lever's ``extra`` overrides."""
    mb, rc = base.train.micro_batch_size, base.parallel.recompute
    return bench_config(mb, rc, base.train.global_batch_size, [*overrides, *extra])


def measure_levers(names, base: tuple, overrides, device, steps: tuple, deadline: float, log, done=None) -> list:
    """Each lever in ``names`` off and on at the timed run's shapes (``base`` = (config, run)), ``steps``
    = (warm-up, timed); a side that equals the timed run reuses it; one that runs out of memory or
    time, or fails, is recorded so. ``done(rows)`` after each lever (the caller writes the file)."""
    cfg0, run0 = base
    rows, build_s = [], 0.0
    _release_memory()  # the timed run's model is gone: its memory goes back before the next build
    for name in names:
        row = {"lever": name}
        for side, extra in zip(("off", "on"), LEVERS[name], strict=True):
            cfg = lever_config(cfg0, extra, overrides)
            if chosen(cfg) == run0["chosen"]:
                row[side] = {**{k: v for k, v in run0.items() if k != "search"}, "reused": "the timed run"}
                continue
            if time.monotonic() + build_s + (sum(steps) + 1) * run0["step_time_s"] > deadline:
                row[side] = {"chosen": chosen(cfg), "not_measured": "the time budget is spent"}
                continue
            t0 = time.monotonic()
            try:
                built = build(cfg, device)
                build_s = time.monotonic() - t0
                row[side] = {**time_steps(built, cfg, device, *steps, deadline, log), "build_s": build_s}
            except Exception as exc:  # noqa: BLE001 -- a lever that fails (memory, a kernel) must not end the others
                why = "out of memory" if isinstance(exc, torch.OutOfMemoryError) else f"failed: {type(exc).__name__}"
                row[side] = {"chosen": chosen(cfg), "not_measured": f"{why}: {str(exc).splitlines()[0][:300]}"}
            built = None
            _release_memory()
            log(f"lever {name} {side}: {json.dumps(row[side].get('step_time_s', row[side].get('not_measured')))}")
        rows.append(row)
        if done is not None:
            done(rows)
    return rows


def parse_levers(text: str) -> list[str]:
    """--levers: comma-separated lever names (of LEVERS), "all" alone for every one, "" for none."""
    if text.strip() == "all":
        return list(LEVERS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        raise SystemExit(f"--levers: unknown {unknown}; choose from {list(LEVERS)} or 'all'")
    return names


# --- the report ----------------------------------------------------------------------------------


def device_info() -> dict:
    if not torch.cuda.is_available():
        return {"name": "cpu", "torch": torch.__version__}
    free, total = torch.cuda.mem_get_info()
    props = torch.cuda.get_device_properties(0)
    return {
        "name": torch.cuda.get_device_name(0),
        "memory_gb": total / GB,
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "count": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def layer_spec() -> dict:
    spec = "transformer_engine" if use_transformer_engine() else "local"
    try:
        te = metadata.version("transformer-engine")
    except metadata.PackageNotFoundError:
        te = None
    return {"decoder": spec, "encoder": "local", "transformer_engine": te, "note": SPEC_NOTES[spec]}


def headline(value_mfu: float | None, tflops: float | None, matmul: float | None, peak: float | None) -> list[dict]:
    """The shared headline rows: MFU against the planner's assumed MFU (parallel.plan_mfu), TFLOP/s against a bare matmul."""
    pct = None if value_mfu is None else 100 * value_mfu
    goal_tflops = None if peak is None else GOAL_MFU * peak
    return [
        {
            "name": "MFU, mm1-ablation bf16 training on one GPU (baseline: mm1.plan's assumed MFU)",
            "value": pct,
            "unit": "%",
            "baseline": 100 * DEFAULT_MFU,
            "ratio": None if pct is None else pct / (100 * DEFAULT_MFU),
            "goal": f"≥ {100 * GOAL_MFU:.0f}%",
            "met": None if pct is None else pct >= 100 * GOAL_MFU,
        },
        {
            "name": "model TFLOP/s (baseline: an 8192^3 bf16 matmul on the same GPU)",
            "value": tflops,
            "unit": "TFLOP/s",
            "baseline": matmul,
            "ratio": None if tflops is None or not matmul else tflops / matmul,
            "goal": None if goal_tflops is None else f"≥ {goal_tflops:.1f} TFLOP/s (50% of the dense BF16 peak)",
            "met": None if tflops is None or goal_tflops is None else tflops >= goal_tflops,
        },
    ]


def target_facts(cfg: RunConfig, peak: float) -> dict:
    """What the full-size measurement is about, with no GPU needed."""
    f = flops(cfg)
    return {
        "preset": PRESET,
        "images_per_sequence": images_per_sequence(cfg),
        "image_tokens": cfg.model.connector.num_tokens,
        "seq_length": cfg.model.decoder.seq_length,
        "sequences_per_step": cfg.train.global_batch_size,
        "parameters": parameters(cfg),
        "flops": f,
        "step_seconds_at_goal": f["per_step"]["total"] / (GOAL_MFU * peak * 1e12),
        "planned_micro_batches": {
            name: planned_micro_batches(cfg, GPUS[name].memory_gb) for name in ("h100-80gb", "h200-141gb")
        },
    }


def lever_rows(rows: list[dict], flops_per_step: float, peak: float | None) -> list[dict]:
    """``rows`` of measure_levers with each measured side's TFLOP/s and MFU (None on a dry run: no
    peak), and the lever's speed-up: off step time / on step time."""
    out = []
    for row in rows:
        row = {**row}
        for side in ("off", "on"):
            seconds = row[side].get("step_time_s")
            row[side] = {
                **row[side],
                "tflops": None if seconds is None else flops_per_step / seconds / 1e12,
                "mfu": None if seconds is None or not peak else mfu(flops_per_step, seconds, peak),
            }
        off, on = row["off"].get("step_time_s"), row["on"].get("step_time_s")
        row["speedup"] = off / on if off and on else None
        out.append(row)
    return out


def report(args, target: dict, timed_run: tuple | None, status: str, matmul: float | None, peak: float | None) -> dict:
    """The results file: ``target`` (full-size facts) and ``timed_run`` = (config, measurements[, lever
    rows]) or None."""
    value = tflops = None
    results = {"target": target, "status": status}
    if timed_run is not None:
        cfg, run, *rows = timed_run
        f = flops(cfg)
        tflops = f["per_step"]["total"] / run["step_time_s"] / 1e12
        value = mfu(f["per_step"]["total"], run["step_time_s"], peak) if peak and not args.dry_run else None
        results["run"] = {
            **run,
            "scale": "tiny model on CPU (--dry-run)" if args.dry_run else "full",
            "parameters": parameters(cfg),
            "flops": f,
            "tflops": tflops,
            "mfu": value,
        }
        if rows:
            results["levers"] = lever_rows(rows[0], f["per_step"]["total"], None if args.dry_run else peak)
    lever_lines = [lever_headline(row) for row in results.get("levers", [])]
    return {
        "benchmark": "gpu_mfu",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "machine": {**provenance.machine(), "device": device_info()},
        "packages": {**provenance.package_versions(), "transformer-engine": layer_spec()["transformer_engine"]},
        "git": provenance.git_state(Path(__file__).parent),
        "setup": {
            "layer_spec": layer_spec(),
            "peak_tflops": peak,
            "matmul_tflops": matmul,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "flops_are": "mm1.models.flops.step_flops: matmuls, backward = 2 x forward, recomputation not counted",
        },
        "results": results,
        "headline": [*headline(value, None if args.dry_run else tflops, matmul, peak), *lever_lines],
    }


def lever_headline(row: dict) -> dict:
    """One headline row per lever: its MFU on against off at the same shapes (% of the peak)."""
    off, on = (None if row[side]["mfu"] is None else 100 * row[side]["mfu"] for side in ("off", "on"))
    what = ", ".join(LEVERS[row["lever"]][1]) or "the timed run"
    return {
        "name": f"MFU with the {row['lever']} lever on ({what}; baseline: off, same shapes)",
        "value": on,
        "unit": "%",
        "baseline": off,
        "ratio": None if on is None or not off else on / off,
        "goal": "> baseline",
        "met": None if on is None or off is None else on > off,
    }


def write(path: Path, data: dict) -> None:
    atomic.write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="no GPU: full-size numbers and a tiny CPU run")
    p.add_argument("--images", type=int, help="images per sequence (default: the preset's most, 16)")
    p.add_argument("--micro-batches", default=",".join(map(str, MICRO_BATCHES)), help="sizes to try, in order")
    p.add_argument("--recompute", choices=["auto", *RECOMPUTE], default="auto")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=300, help="search + timing stop within about this long")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense BF16 peak (default: by device name)")
    p.add_argument("--out", type=Path, help=f"default {OUT} (--dry-run: gpu_mfu_dry_run.json beside it)")
    p.add_argument(
        "--levers", default="", help=f"time these levers off vs on: comma-separated of {list(LEVERS)}, or all"
    )
    args = p.parse_args()
    lever_names = parse_levers(args.levers)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        raise SystemExit("bench/gpu_mfu.py needs a CUDA GPU (or --dry-run)")
    out = args.out or (OUT.with_name("gpu_mfu_dry_run.json") if args.dry_run else OUT)
    images = [f"data.mixture.max_images_per_sequence={args.images}"] if args.images is not None else []
    target = bench_config(overrides=images)
    name = torch.cuda.get_device_name(0) if cuda else "H100"
    peak = args.peak_tflops or peak_tflops(name) or (None if cuda else 989.0)
    plan_gpu = next((GPUS[g] for key, g in PLAN_GPUS if key in name), None)
    memory_gb = plan_gpu.memory_gb if plan_gpu else (torch.cuda.mem_get_info()[1] / GB if cuda else 80.0)

    def log(msg: str) -> None:
        print(f"gpu_mfu: {msg}", flush=True)

    facts_ = target_facts(target, peak or 989.0)
    planned = planned_micro_batches(target, memory_gb)
    if cuda:
        facts_["planned_this_gpu"] = {"memory_gb": memory_gb, **planned}
    if args.dry_run:  # the tiny model through the same search and timing code, on CPU
        overrides, candidates, levels = [*TINY], (1, 2), ("none",)
        args.warmup, args.steps = 1, 1
    else:
        overrides, candidates = images, tuple(int(x) for x in args.micro_batches.split(","))
        fits_one = [rc for rc in RECOMPUTE if planned[rc]["largest"] >= 1] or ["full"]
        levels = (args.recompute,) if args.recompute != "auto" else RECOMPUTE[RECOMPUTE.index(fits_one[0]) :]
    matmul = matmul_tflops() if cuda else None
    write(out, report(args, facts_, None, "searching", matmul, peak))
    with distributed(ParallelConfig(), seed=0):
        try:
            device = torch.device("cuda" if cuda else "cpu")
            cfg, run, deadline = measure(levels, candidates, overrides, device, args.warmup, args.steps,
                                         args.budget_s, log)  # fmt: skip
            write(out, report(args, facts_, (cfg, run), "timing levers", matmul, peak))
            rows = measure_levers(
                lever_names,
                (cfg, run),
                overrides,
                device,
                (1, max(1, args.steps - 2)),
                deadline,
                log,
                done=lambda rows: write(out, report(args, facts_, (cfg, run, rows), "timing levers", matmul, peak)),
            )
        except Exception as exc:
            write(out, report(args, facts_, None, f"failed: {type(exc).__name__}: {exc}"[:2000], matmul, peak))
            raise
    data = report(args, facts_, (cfg, run, rows), "done", matmul, peak)
    write(out, data)
    r = data["results"]["run"]
    log(
        f"{layer_spec()['decoder']} spec, recompute {r['chosen']['recompute']}, micro-batch {r['chosen']['micro_batch']}"
        f" x {r['chosen']['accumulation']}: {r['step_time_s']:.3f} s/step, {r['tflops']:.1f} TFLOP/s"
        + (f", MFU {100 * r['mfu']:.1f}% of {peak:.0f}" if r["mfu"] is not None else "")
        + f" -> {out}"
    )


if __name__ == "__main__":
    main()
