"""Image-encoder pre-training, the axis of MM1's Table 1: CLIP (contrastive) or AIM (reconstructive).

``model.encoder.objective`` picks the head (:class:`~mm1.models.clip.ClipModel` on caption pairs,
:class:`~mm1.models.aim.AimModel` on their images). The checkpoint keeps the ViT as ``encoder.*``,
the keys of the multimodal model, so ``mm1 train --init-encoder`` starts from it (at any image
size: the position embeddings are interpolated on load).

Data parallelism splits each global batch over the ranks; CLIP's negatives are the other pairs of
the same micro-batch (no cross-rank gather), so its loss depends on the micro-batch size, not on
the layout. The encoder runs without pipeline or expert parallelism (it is one pipeline stage in
the multimodal model too).

After training, :mod:`mm1.train.encoder_eval` checks the encoder on held-out images (CLIP:
image->caption retrieval against chance; AIM: next-patch loss against the mean predictor):
``metrics.json`` and ``encoder.png`` beside ``metrics.csv``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import polars as pl
import torch

from mm1 import atomic, outlock, provenance
from mm1.config import RunConfig
from mm1.data.encoder_batches import EncoderBatches, load_caption_samples
from mm1.data.quarantine import Quarantine
from mm1.data.tokenizer import TextTokenizer
from mm1.models.aim import AimModel
from mm1.models.clip import ClipModel
from mm1.models.megatron_config import Layout
from mm1.models.size import encoder_params, peak_lr, torch_weight_decay
from mm1.parallel.setup import Rank, distributed
from mm1.progress import progress
from mm1.train import checkpoint, encoder_eval
from mm1.train.optim import build_optimizer, wrap_ddp

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads

SECTIONS = ("data", "model", "parallel", "train")  # the parts of RunConfig this stage reads


def build_encoder_model(cfg: RunConfig, vocab_size: int) -> ClipModel | AimModel:
    """The encoder with its pre-training head, for the current process groups."""
    enc, layout = cfg.model.encoder, Layout(tp=cfg.parallel.tp, recompute=cfg.parallel.recompute)
    return ClipModel(enc, vocab_size, layout) if enc.objective == "clip" else AimModel(enc, layout)


def check_layout(cfg: RunConfig) -> None:
    if cfg.parallel.pp > 1 or cfg.parallel.ep > 1:
        raise ValueError(
            f"encoder pre-training runs without pipeline or expert parallelism (parallel.pp={cfg.parallel.pp}, "
            f"parallel.ep={cfg.parallel.ep}); set both to 1 and use tp or data parallelism"
        )
    heads = cfg.model.encoder.clip.text_attention_heads
    if cfg.model.encoder.objective == "clip" and heads % cfg.parallel.tp:  # only this stage builds the text tower
        raise ValueError(
            f"parallel.tp={cfg.parallel.tp} must divide model.encoder.clip.text_attention_heads={heads} "
            "(the CLIP text tower is split over the same TP ranks); use a divisor of it for this stage"
        )
    if "encoder" in cfg.train.freeze:
        raise ValueError("train.freeze lists encoder: nothing would train in encoder pre-training")


def _hparams(cfg: RunConfig) -> tuple[float, float]:
    """train.lr / train.weight_decay, or MM1's law applied to the encoder's parameter count
    (weight decay in torch terms: MM1's decoupled 0.1 x peak LR is 0.1, see torch_weight_decay)."""
    lr = cfg.train.lr or peak_lr(encoder_params(cfg.model.encoder).total)
    wd = torch_weight_decay(cfg.train)
    return lr, wd


def _step(cfg: RunConfig, model, batches: EncoderBatches, step: int, rank: Rank, prefix_gen: torch.Generator):
    """Forward and backward of every micro-batch of one step; returns the mean loss over ranks."""
    tc = cfg.train
    micro = list(batches.micro_batches(step, tc.global_batch_size, tc.micro_batch_size, rank.dp_rank, rank.dp_size))
    scale = 1.0 / (len(micro) * rank.dp_size)  # DDP sums gradients over ranks (per-token mode)
    total = torch.zeros(1)
    for batch in micro:
        batch = {k: v.to(rank.device) for k, v in batch.items()}
        if cfg.model.encoder.objective == "clip":
            loss = model(**batch)
        else:
            loss = model(batch["images"], generator=prefix_gen)
        (loss * scale).backward()
        total += loss.detach().float().cpu() * scale
    finalize_model_grads([model])
    torch.distributed.all_reduce(total)
    return total.item()


def train_encoder(cfg: RunConfig, manifest: Path, tokenizer_path: Path, out_dir: Path) -> pl.DataFrame:
    """Pre-train the encoder on the caption pairs of ``manifest``; write checkpoint, metrics, provenance."""
    check_layout(cfg)
    out_dir = Path(out_dir)
    tok = TextTokenizer(tokenizer_path)
    quarantine = Quarantine()
    samples = load_caption_samples(manifest, quarantine)
    quarantine.check(cfg.data.max_bad_fraction)
    heldout = encoder_eval.heldout_captions(manifest)
    tc = cfg.train
    with outlock.hold(out_dir), distributed(cfg.parallel, tc.seed) as rank:  # one run per out_dir
        model = wrap_ddp(build_encoder_model(cfg, tok.vocab_size).to(rank.device), cfg.parallel)
        lr, wd = _hparams(cfg)
        optimizer, scheduler = build_optimizer(model, tc, lr, wd)
        batches = EncoderBatches.for_encoder(
            cfg.model.encoder, samples, tc.seed, tok, cfg.data.mixture.synthetic_captions
        )
        prefix_gen = torch.Generator().manual_seed(tc.seed)  # AIM's prefix lengths, the same on every rank
        rows, start = [], time.perf_counter()
        bar = progress(
            total=tc.steps, desc=f"encoder ({cfg.model.encoder.objective})", unit="step", disable=not rank.is_main
        )
        for step in range(tc.steps):
            t0 = time.perf_counter()
            model.zero_grad_buffer()
            optimizer.zero_grad()
            loss = _step(cfg, model, batches, step, rank, prefix_gen)
            _, grad_norm, _ = optimizer.step()
            scheduler.step(increment=1)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"encoder loss became {loss} at step {step + 1}; lower train.lr (peak {lr:.3g})"
                )
            dt = time.perf_counter() - t0
            rows.append(
                {
                    "step": step + 1,
                    "loss": loss,
                    "lr": optimizer.param_groups[0]["lr"],
                    "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                    "step_time_s": dt,
                    "images_per_s": tc.global_batch_size / dt,
                    "elapsed_s": time.perf_counter() - start,
                }
            )
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
        bar.close()
        train_s, t0 = time.perf_counter() - start, time.perf_counter()
        scores = None
        if heldout is not None:  # every rank runs it: a tensor-parallel forward needs them all
            scores = encoder_eval.evaluate_encoder(
                model.module, heldout, cfg.model.encoder.image_size, tok, rank.device
            )
        curve = [r["loss"] for r in rows]
        summary = encoder_eval.summarize(cfg.model.encoder.objective, curve, tc.micro_batch_size, scores)
        summary |= {"train_s": train_s, "eval_s": time.perf_counter() - t0}
        meta = {
            "model": cfg.model.model_dump(mode="json"),
            "vocab_size": tok.vocab_size,
            "image_token_id": tok.image_id,
            "objective": cfg.model.encoder.objective,
            "steps": tc.steps,
        }
        checkpoint.save(model.module, meta, out_dir / "checkpoint")
        metrics = pl.DataFrame(rows)
        if rank.is_main:
            atomic.write_text(out_dir / "metrics.csv", metrics.write_csv())
            atomic.write_text(out_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
            atomic.write_bytes(out_dir / "encoder.png", encoder_eval.plot_encoder(metrics["step"], curve, summary))
            provenance.record(
                out_dir,
                stage="encoder",
                config={k: getattr(cfg, k).model_dump(mode="json") for k in SECTIONS},
                seed=tc.seed,
                inputs={"manifest": Path(manifest), "tokenizer": Path(tokenizer_path)},
                extra={"peak_lr": lr, "weight_decay": wd, "final_loss": rows[-1]["loss"], "samples": len(samples)}
                | {k: v for k, v in summary.items() if k.startswith("heldout_")},
            )
    return metrics
