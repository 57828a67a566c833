"""Multimodal pre-training of the MM1 model with megatron-core's schedules, DDP and optimizer.

One optimizer step = ``global_batch_size`` sequences, split into micro-batches over the
data-parallel ranks and accumulated by ``get_forward_backward_func``. The loss is the mean over
all caption tokens of the global batch (per-token loss, so it is the same for every layout).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from mm1 import atomic, provenance
from mm1.config import RunConfig
from mm1.data.batches import PackedData, micro_batches
from mm1.data.tokenizer import TextTokenizer
from mm1.models.megatron_config import Layout
from mm1.models.mm1_model import MM1Model
from mm1.models.size import optimizer_hparams
from mm1.parallel.setup import Rank, distributed
from mm1.progress import progress
from mm1.train import checkpoint
from mm1.train.optim import build_optimizer, wrap_ddp

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

SECTIONS = ("model", "parallel", "train")  # the parts of RunConfig this stage reads


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    metrics: pl.DataFrame


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


def _step_loss(reports: list[dict], rank: Rank) -> float:
    """Mean caption-token loss of the step across micro-batches and data-parallel ranks."""
    stats = torch.zeros(2)
    if rank.is_last_stage:
        for report in reports:
            stats += report["lm loss"].detach().float().cpu()
    torch.distributed.all_reduce(stats)  # every rank learns it (non-last stages add zeros)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    stats /= tp  # each TP rank of the last stage reported the same numbers
    return (stats[0] / stats[1].clamp(min=1)).item()


def build(cfg: RunConfig, tok: TextTokenizer) -> MM1Model:
    """The model chunk of this pipeline stage, for the current process groups."""
    layout = Layout(tp=cfg.parallel.tp, pp=cfg.parallel.pp, ep=cfg.parallel.ep)
    return MM1Model(
        cfg.model,
        vocab_size=tok.vocab_size,
        image_token_id=tok.image_id,
        layout=layout,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
    )


def _train_loop(cfg: RunConfig, data: PackedData, model, optimizer, scheduler, rank: Rank) -> list[dict]:
    tc, mc = cfg.train, cfg.model
    n_micro = tc.global_batch_size // (tc.micro_batch_size * rank.dp_size)
    forward_backward = get_forward_backward_func()
    rows: list[dict] = []
    bar = progress(total=tc.steps, desc="train", unit="step", disable=not rank.is_main)
    tokens_per_step = tc.global_batch_size * mc.decoder.seq_length
    start = time.perf_counter()
    for step in range(tc.steps):
        t0 = time.perf_counter()
        model.zero_grad_buffer()
        optimizer.zero_grad()
        it = micro_batches(data, step, tc.global_batch_size, tc.micro_batch_size, rank.dp_rank, rank.dp_size)
        reports = forward_backward(
            forward_step_func=_forward_step,
            data_iterator=it,
            model=[model],
            num_microbatches=n_micro,
            seq_length=mc.decoder.seq_length,
            micro_batch_size=tc.micro_batch_size,
            forward_only=False,
        )
        ok, grad_norm, _ = optimizer.step()
        scheduler.step(increment=1)
        loss = _step_loss(reports, rank)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss} at step {step + 1}; lower train.lr (peak now {scheduler.max_lr:.3g})"
            )
        dt = time.perf_counter() - t0
        rows.append(
            {
                "step": step + 1,
                "loss": loss,
                "lr": optimizer.param_groups[0]["lr"],
                "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "step_time_s": dt,
                "tokens_per_s": tokens_per_step / dt,
                "elapsed_s": time.perf_counter() - start,
            }
        )
        bar.update(1)
        if (step + 1) % tc.log_interval == 0 or step == 0:
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{rows[-1]['lr']:.2e}")
    bar.close()
    return rows


def train(cfg: RunConfig, packed_path: Path, tokenizer_path: Path, out_dir: Path) -> TrainResult:
    """Train on the packed sequences in ``packed_path``; write checkpoint, metrics and provenance."""
    out_dir = Path(out_dir)
    tok = TextTokenizer(tokenizer_path)
    mc = cfg.model
    with distributed(cfg.parallel, cfg.train.seed) as rank:
        data = PackedData.load(packed_path, mc.decoder.seq_length, mc.encoder.image_size)
        model = wrap_ddp(build(cfg, tok).to(rank.device))
        lr, weight_decay = optimizer_hparams(cfg, vocab_size=tok.vocab_size)  # config, or MM1's law
        optimizer, scheduler = build_optimizer(model, cfg.train, lr, weight_decay)
        rows = _train_loop(cfg, data, model, optimizer, scheduler, rank)
        meta = {
            "model": mc.model_dump(mode="json"),
            "vocab_size": tok.vocab_size,
            "image_token_id": tok.image_id,
            "steps": cfg.train.steps,
            "trained_layout": {"tp": cfg.parallel.tp, "pp": cfg.parallel.pp, "ep": cfg.parallel.ep},
        }
        ckpt = checkpoint.save(model.module, meta, out_dir / "checkpoint")  # unwrapped: no "module." keys
        metrics = pl.DataFrame(rows)
        if rank.is_main:
            atomic.write_text(out_dir / "metrics.csv", metrics.write_csv())
            provenance.record(
                out_dir,
                stage="train",
                config={k: getattr(cfg, k).model_dump(mode="json") for k in SECTIONS},
                seed=cfg.train.seed,
                inputs={"packed": Path(packed_path), "tokenizer": Path(tokenizer_path)},
                extra={
                    "layout": {"world_size": rank.world_size, "dp": rank.dp_size},
                    "peak_lr": lr,
                    "weight_decay": weight_decay,
                    "final_loss": rows[-1]["loss"],
                    "wall_s": rows[-1]["elapsed_s"],
                },
            )
    return TrainResult(checkpoint=ckpt, metrics=metrics)
