"""Image-encoder pre-training, the axis of MM1's Table 1: CLIP (contrastive) or AIM (reconstructive).

``model.encoder.objective`` picks the head (:class:`~mm1.models.clip.ClipModel` on caption pairs,
:class:`~mm1.models.aim.AimModel` on their images). The checkpoint keeps the ViT as ``encoder.*``,
the keys of the multimodal model, so ``mm1 train --init-encoder`` starts from it (at any image
size: the position embeddings are interpolated on load).

Data parallelism splits each global batch over the ranks; CLIP's negatives are the other pairs of
the same micro-batch (no cross-rank gather), so its loss depends on the micro-batch size, not on
the layout. The encoder runs without pipeline or expert parallelism (it is one pipeline stage in
the multimodal model too).

The steps run in the training loop every stage shares (:mod:`mm1.train.loop`): resumable
checkpoints in ``resume/``, bit-for-bit resume, preemption (save and exit 75 for requeue), DVCLive.
AIM's prefix lengths come from a generator of their own, saved and restored with the other RNG states.

After training, :mod:`mm1.train.encoder_eval` checks the encoder on held-out images (CLIP:
image->caption retrieval against chance; AIM: next-patch loss against the mean predictor):
``metrics.json`` and ``encoder.png`` beside ``metrics.csv``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import polars as pl
import torch

from mm1 import atomic, provenance
from mm1.config import RunConfig
from mm1.data.encoder_batches import EncoderBatches, load_caption_samples
from mm1.data.quarantine import Quarantine
from mm1.data.tokenizer import TextTokenizer
from mm1.models.aim import AimModel
from mm1.models.clip import ClipModel
from mm1.models.megatron_config import MegatronLayout, levers
from mm1.models.size import encoder_params, peak_lr, torch_weight_decay
from mm1.parallel.setup import Rank
from mm1.stages import STAGES
from mm1.train import checkpoint, encoder_eval
from mm1.train.loop import Objective, TrainingRun
from mm1.train.optim import build_optimizer, wrap_ddp
from mm1.train.trainer import with_recompute_resolved

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads

SECTIONS = STAGES["encoder"].reads  # the config sections this stage reads (mm1.stages)


def build_encoder_model(cfg: RunConfig, vocab_size: int) -> ClipModel | AimModel:
    """The encoder with its pre-training head, for the current process groups."""
    par = cfg.parallel
    enc, layout = cfg.model.encoder, MegatronLayout(tp=par.tp, recompute=par.recompute, **levers(par))
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


def _objective(cfg: RunConfig, model, batches: EncoderBatches, rank: Rank, prefix_gen: torch.Generator) -> Objective:
    """CLIP's contrastive or AIM's next-patch loss over step t's global batch, split into micro-batches."""
    tc = cfg.train

    def step_loss(step: int) -> float:
        """Forward and backward of every micro-batch of one step; returns the mean loss over ranks."""
        micro = list(
            batches.micro_batches(step - 1, tc.global_batch_size, tc.micro_batch_size, rank.dp_rank, rank.dp_size)
        )
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

    def throughput(step: int, seconds: float) -> dict[str, float]:
        return {"images_per_s": tc.global_batch_size / seconds}

    return Objective(f"encoder ({cfg.model.encoder.objective})", step_loss, throughput)


def train_encoder(
    cfg: RunConfig,
    manifest: Path,
    tokenizer_path: Path,
    out_dir: Path,
    *,
    init: Path | None = None,
    stop_after: int | None = None,
) -> pl.DataFrame:
    """Pre-train the encoder on the caption pairs of ``manifest``; write checkpoint, metrics, provenance.

    ``init`` (``train.init_from``: e.g. ``mm1 import-hf``'s checkpoint of a HF CLIP tower) gives the
    ViT its starting weights on a fresh start (a resumed run has its own); the heads keep their init.

    Resumable checkpoints, resume and preemption as in :func:`mm1.train.trainer.train`: a preemption
    signal, or reaching step ``stop_after`` (for tests), saves and raises
    :class:`~mm1.train.signals.Preempted` (exit code 75) instead of finishing.
    """
    check_layout(cfg)
    cfg = with_recompute_resolved(cfg)
    out_dir = Path(out_dir)
    tok = TextTokenizer(tokenizer_path)
    quarantine = Quarantine()
    samples = load_caption_samples(manifest, quarantine)
    quarantine.check(cfg.data.max_bad_fraction)
    heldout = encoder_eval.heldout_captions(manifest)
    inputs = {"manifest": Path(manifest), "tokenizer": Path(tokenizer_path)}
    inputs |= {"init_encoder": Path(init)} if init is not None else {}
    tc = cfg.train
    with TrainingRun(cfg, SECTIONS, out_dir, inputs, stop_after=stop_after) as run:  # one run per out_dir
        rank = run.rank
        model = build_encoder_model(cfg, tok.vocab_size)
        if init is not None and not run.found:
            checkpoint.load_into(model, init, ("encoder",))
        model = wrap_ddp(model.to(rank.device), cfg.parallel)
        lr, wd = _hparams(cfg)
        optimizer, scheduler = build_optimizer(model, tc, lr, wd)
        batches = EncoderBatches.for_encoder(
            cfg.model.encoder, samples, tc.seed, tok, cfg.data.mixture.synthetic_captions
        )
        prefix_gen = torch.Generator().manual_seed(tc.seed)  # AIM's prefix lengths, the same on every rank
        run.restore(model, optimizer, scheduler, generators={"aim_prefix": prefix_gen})
        if run.train(_objective(cfg, model, batches, rank, prefix_gen)):
            metrics = run.metrics()
            t0 = time.perf_counter()
            scores = None
            if heldout is not None:  # every rank runs it: a tensor-parallel forward needs them all
                scores = encoder_eval.evaluate_encoder(
                    model.module, heldout, cfg.model.encoder.image_size, tok, rank.device
                )
            curve = metrics["loss"].to_list()
            summary = encoder_eval.summarize(cfg.model.encoder.objective, curve, tc.micro_batch_size, scores)
            summary |= {"train_s": metrics["elapsed_s"][-1], "eval_s": time.perf_counter() - t0}
            resumed = str(run.found) if run.found else None
            extra = {"peak_lr": lr, "weight_decay": wd, "samples": len(samples), "resumed_from": resumed}
            _write_outputs(cfg, tok, model.module, metrics, summary, rank, out_dir, inputs, extra)
    return metrics


def _write_outputs(cfg, tok, model, metrics: pl.DataFrame, summary: dict, rank: Rank, out_dir: Path, inputs, extra):
    """The stage's outputs: the encoder checkpoint (every rank), metrics.csv, metrics.json,
    encoder.png and provenance (rank 0)."""
    meta = {
        "model": cfg.model.model_dump(mode="json"),
        "vocab_size": tok.vocab_size,
        "image_token_id": tok.image_id,
        "objective": cfg.model.encoder.objective,
        "steps": cfg.train.steps,
    }
    checkpoint.save(model, meta, out_dir / "checkpoint")
    if rank.is_main:
        curve = metrics["loss"].to_list()
        atomic.write_text(out_dir / "metrics.csv", metrics.write_csv())
        atomic.write_text(out_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
        atomic.write_bytes(out_dir / "encoder.png", encoder_eval.plot_encoder(metrics["step"], curve, summary))
        provenance.record(
            out_dir,
            stage="encoder",
            config=provenance.sections(cfg, SECTIONS),
            seed=cfg.train.seed,
            inputs=inputs,
            extra=extra | {"final_loss": curve[-1]} | {k: v for k, v in summary.items() if k.startswith("heldout_")},
        )
