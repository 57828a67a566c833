"""Multimodal pre-training of the MM1 model with megatron-core's schedules, DDP and optimizer.

One optimizer step = ``global_batch_size`` sequences, split into micro-batches over the
data-parallel ranks and accumulated by ``get_forward_backward_func``. The loss is the mean over
all caption tokens of the global batch (per-token loss, so it is the same for every layout).

The steps run in the training loop every stage shares (:mod:`mm1.train.loop`): resumable
checkpoints, bit-for-bit resume, preemption (save and exit for requeue), metrics.csv and DVCLive.
This module adds the objective: megatron's forward-backward schedule over the packed sequences,
streamed block by block (:mod:`mm1.data.stream`): each data-parallel rank reads only its micro-batches.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from mm1 import atomic, provenance
from mm1.config import RunConfig
from mm1.data.stream import RankBatches, StepLoader, open_packed
from mm1.data.tokenizer import TextTokenizer
from mm1.models.init import init_weights
from mm1.models.megatron_config import MegatronLayout
from mm1.models.mm1_model import MM1Model
from mm1.models.size import optimizer_hparams
from mm1.parallel.setup import Rank
from mm1.plan.estimate import resolve_recompute
from mm1.stages import TRAINED
from mm1.train import checkpoint
from mm1.train.loop import RESUME, Objective, TrainingRun, facts
from mm1.train.metrics import MoEStats
from mm1.train.optim import build_optimizer, freeze, use_bf16, wrap_ddp

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.module import Float16Module

SECTIONS = TRAINED  # the config sections the training stages read (mm1.stages)
__all__ = ["RESUME", "SECTIONS", "TrainResult", "build", "train"]  # RESUME: mm1.train.loop's


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    metrics: pl.DataFrame  # steps 1..train.steps, restored rows included
    resumed_from: int = 0  # the step of the resumable checkpoint this run continued from (0: none)


def _loss_func(loss_mask: torch.Tensor, per_token: torch.Tensor):
    """(sum of caption-token losses, number of caption tokens, report) -- megatron's per-token form."""
    mask = loss_mask.float()
    total = (per_token.float() * mask).sum()
    count = mask.sum()
    return total, count.to(torch.int), {"lm loss": torch.stack([total.detach(), count])}


def _forward_step(data_iterator, model):
    device = next(model.parameters()).device
    batch = {k: v.to(device, non_blocking=True) for k, v in next(data_iterator).items()}
    out = model(batch["tokens"], batch["images"], batch["labels"])
    return out, functools.partial(_loss_func, batch["loss_mask"])


def _step_loss(reports: list[dict], rank: Rank, images: int) -> tuple[float, int]:
    """Mean caption-token loss of the step across micro-batches and data-parallel ranks, and the
    step's number of images (``images``: those this rank's micro-batches held)."""
    stats = torch.zeros(3)
    if rank.is_last_stage:
        for report in reports:
            stats[:2] += report["lm loss"].detach().float().cpu()
    stats[2] = images
    torch.distributed.all_reduce(stats)  # every rank learns it (non-last stages add zero losses)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    stats[:2] /= tp  # each TP rank of the last stage reported the same numbers
    readers = rank.world_size // rank.dp_size  # every TP and PP rank of a data-parallel rank reads its batches
    return (stats[0] / stats[1].clamp(min=1)).item(), round(stats[2].item() / readers)


def _loader_workers(cfg: RunConfig) -> int:
    """DataLoader worker processes that build the micro-batches (0: the training process does)."""
    return cfg.parallel.loader_workers


def with_recompute_resolved(cfg: RunConfig) -> RunConfig:
    """``parallel.recompute: auto`` replaced by the least recomputation the planner finds fits this
    device's memory (none on CPU); any other value unchanged. The resolved value is what the run's
    provenance and resume checks record."""
    memory_gb = torch.cuda.get_device_properties(0).total_memory / 1e9 if torch.cuda.is_available() else None
    return resolve_recompute(cfg, memory_gb)


# Where ``train(init=...)`` loads weights from: (checkpoint, the model parts it provides or None for all).
Init = list[tuple[Path, tuple[str, ...] | None]]


def build(cfg: RunConfig, tok: TextTokenizer, init: Init | None = None) -> torch.nn.Module:
    """The model chunk of this pipeline stage, for the current process groups, ready for ``wrap_ddp``.

    Its weights come from ``train.seed`` alone: the full tensors are the same for every TP/PP/EP
    layout (:func:`mm1.models.init.init_weights`); then each ``init`` checkpoint overwrites the parts
    it names (a CLIP/AIM encoder, a text-only LLM, a pre-trained model for SFT at another image size).
    ``train.freeze`` parts get no gradients. In bf16 (``train.precision``) the MM1Model sits in
    megatron's Float16Module: bf16 inside, fp32 in and out.
    """
    bf16 = use_bf16(cfg.train.precision)
    par = cfg.parallel
    layout = MegatronLayout.of(par, bf16=bf16)  # recompute resolved: see with_recompute_resolved
    model = MM1Model(
        cfg.model,
        vocab_size=tok.vocab_size,
        image_token_id=tok.image_id,
        layout=layout,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
    )
    init_weights(model, cfg.train.seed)
    for ckpt, parts in init or []:
        checkpoint.load_into(model, ckpt, parts)
    freeze(model, cfg.train.freeze)
    return Float16Module(model.config, model) if bf16 else model


def _objective(cfg: RunConfig, loader: StepLoader, model, rank: Rank) -> Objective:
    """Next-token loss on the caption tokens of step t's global batch, through megatron's schedule."""
    tc, mc = cfg.train, cfg.model
    n_micro = tc.global_batch_size // (tc.micro_batch_size * rank.dp_size)
    forward_backward = get_forward_backward_func()
    moe = MoEStats(model, mc.decoder.num_layers, mc.moe.num_experts, n_micro) if mc.moe.enabled else None
    tokens_per_step = tc.global_batch_size * mc.decoder.seq_length
    seen = {"images": 0}  # images of this rank's micro-batches, then of the step (after step_loss)

    def counted(batches):
        for batch in batches:
            seen["images"] += len(batch["images"])
            yield batch

    def step_loss(step: int) -> float:  # step t uses the sequences of batch t - 1
        seen["images"] = 0
        it = counted(loader.step(step - 1))
        reports = forward_backward(
            forward_step_func=_forward_step,
            data_iterator=it,
            model=[model],
            num_microbatches=n_micro,
            seq_length=mc.decoder.seq_length,
            micro_batch_size=tc.micro_batch_size,
            forward_only=False,
        )
        loss, seen["images"] = _step_loss(reports, rank, seen["images"])
        return loss

    def throughput(step: int, seconds: float) -> dict[str, float]:
        return {"tokens_per_s": tokens_per_step / seconds, "images_per_s": seen["images"] / seconds}

    return Objective("train", step_loss, throughput, moe.collect if moe else None)


def _facts(cfg: RunConfig, rank: Rank, inputs: dict[str, Path]) -> dict:
    """What this stage's resumable checkpoints record of their run (:func:`mm1.train.loop.facts`)."""
    return facts(cfg, SECTIONS, rank, inputs)


def _write_outputs(cfg, tok, model, metrics: pl.DataFrame, rank: Rank, out_dir: Path, inputs, extra: dict) -> Path:
    """The stage's outputs: the model checkpoint (every rank), metrics.csv and provenance (rank 0)."""
    par = cfg.parallel
    meta = {
        "model": cfg.model.model_dump(mode="json"),
        "vocab_size": tok.vocab_size,
        "image_token_id": tok.image_id,
        "steps": cfg.train.steps,
        "trained_layout": {"tp": par.tp, "pp": par.pp, "ep": par.ep},
    }
    ckpt = checkpoint.save(model, meta, out_dir / "checkpoint")  # the unwrapped model: no "module." keys
    if rank.is_main:
        atomic.write_text(out_dir / "metrics.csv", metrics.write_csv())
        provenance.record(
            out_dir,
            stage="train",
            config=provenance.sections(cfg, SECTIONS),
            seed=cfg.train.seed,
            inputs=inputs,
            extra={
                "layout": {"world_size": rank.world_size, "dp": rank.dp_size},
                **extra,
                "final_loss": metrics["loss"][-1],
                "wall_s": metrics["elapsed_s"][-1],
            },
        )
    return ckpt


def train(
    cfg: RunConfig,
    packed_path: Path,
    tokenizer_path: Path,
    out_dir: Path,
    *,
    init: Init | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train on the packed sequences in ``packed_path``; write checkpoint, metrics and provenance.

    The loop (:class:`~mm1.train.loop.TrainingRun`) saves resumable checkpoints to ``out_dir/resume``
    and, with ``train.resume``, continues from the newest one bit for bit (same layout). A preemption
    signal, or reaching step ``stop_after`` (for tests), saves one and raises
    :class:`~mm1.train.signals.Preempted` (exit code 75: requeue me) instead of finishing.
    ``init`` (see :func:`build`) applies to a fresh start only; a resumed run has its own weights.
    While it runs, ``out_dir`` is locked (:mod:`mm1.outlock`): a second run on it fails at once.
    """
    cfg = with_recompute_resolved(cfg)
    out_dir = Path(out_dir)
    tok = TextTokenizer(tokenizer_path)
    inputs = {"packed": Path(packed_path), "tokenizer": Path(tokenizer_path)}
    inputs |= {f"init_{'+'.join(parts or ('all',))}": Path(ckpt) for ckpt, parts in init or []}
    tc, mc = cfg.train, cfg.model
    with TrainingRun(cfg, SECTIONS, out_dir, inputs, stop_after=stop_after) as run:
        found, rank = run.found, run.rank  # found: another run's checkpoints are moved aside
        reader = open_packed(packed_path, mc.decoder.seq_length)  # reads one block; blocks are read as needed
        batches = RankBatches(
            reader, mc.encoder.image_size, tc.global_batch_size, tc.micro_batch_size, rank.dp_rank, rank.dp_size
        )
        loader = StepLoader(batches, tc.steps, _loader_workers(cfg))
        model = wrap_ddp(build(cfg, tok, None if found else init).to(rank.device), cfg.parallel)
        lr, weight_decay = optimizer_hparams(cfg, vocab_size=tok.vocab_size)  # config, or MM1's law
        optimizer, scheduler = build_optimizer(model, tc, lr, weight_decay, lr_mult=tc.lr_mult)
        run.restore(model, optimizer, scheduler)
        try:
            done = run.train(_objective(cfg, loader, model, rank))
        finally:
            loader.close()
        if done:
            metrics = run.metrics()
            extra = {"peak_lr": lr, "weight_decay": weight_decay, "resumed_from": str(found) if found else None}
            ckpt = _write_outputs(cfg, tok, model.module, metrics, rank, out_dir, inputs, extra)
    return TrainResult(checkpoint=ckpt, metrics=metrics, resumed_from=run.start)
