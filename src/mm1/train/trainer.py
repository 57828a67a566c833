"""Multimodal pre-training of the MM1 model with megatron-core's schedules, DDP and optimizer.

One optimizer step = ``global_batch_size`` sequences, split into micro-batches over the
data-parallel ranks and accumulated by ``get_forward_backward_func``. The loss is the mean over
all caption tokens of the global batch (per-token loss, so it is the same for every layout).

A run saves resumable checkpoints (:mod:`mm1.train.state`) and continues from the newest one, bit
for bit; on a preemption signal it saves and exits for requeue (:mod:`mm1.train.preempt`). Per-step
metrics go to metrics.csv and DVCLive (:mod:`mm1.train.metrics`).
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

from mm1 import atomic, outlock, provenance
from mm1.config import RunConfig
from mm1.data.batches import PackedData, micro_batches, step_indices
from mm1.data.tokenizer import TextTokenizer
from mm1.models.init import init_weights
from mm1.models.megatron_config import Layout
from mm1.models.mm1_model import MM1Model
from mm1.models.size import optimizer_hparams
from mm1.parallel.setup import Rank, distributed
from mm1.progress import progress
from mm1.train import checkpoint, state
from mm1.train.metrics import MetricsLog, MoEStats
from mm1.train.optim import build_optimizer, freeze, use_bf16, wrap_ddp
from mm1.train.preempt import REQUEUE_EXIT, Preempted, StopSignals, report_exit, signal_hook

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.module import Float16Module

SECTIONS = ("model", "parallel", "train")  # the parts of RunConfig this stage reads
RESUME = "resume"  # out_dir/resume: resumable checkpoints; not a declared output, so reruns keep it


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
    layout = Layout(
        tp=par.tp, pp=par.pp, ep=par.ep, bf16=bf16, recompute=par.recompute, sequence_parallel=par.sequence_parallel
    )
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


def _train_loop(
    cfg: RunConfig, data: PackedData, model, optimizer, scheduler, rank: Rank, log, start, stop, save, hook
) -> int:
    """Run steps ``start+1 .. train.steps``; return the last step run (below train.steps if ``stop``).

    After each step: ``stop(step)`` (a collective: every rank agrees), then ``save(step)`` at a
    stop, every ``train.save_interval`` steps and at the end (``train.save_at_end``). ``hook`` is the
    fault tests' signal (:class:`~mm1.train.preempt.SignalAt`), raised inside a step.
    """
    tc, mc = cfg.train, cfg.model
    n_micro = tc.global_batch_size // (tc.micro_batch_size * rank.dp_size)
    forward_backward = get_forward_backward_func()
    moe = MoEStats(model, mc.decoder.num_layers, mc.moe.num_experts, n_micro) if mc.moe.enabled else None
    bar = progress(total=tc.steps, initial=start, desc="train", unit="step", disable=not rank.is_main)
    tokens_per_step = tc.global_batch_size * mc.decoder.seq_length
    clock = time.perf_counter() - (log.rows[-1]["elapsed_s"] if log.rows else 0.0)  # elapsed_s goes on
    step = start
    for step in range(start + 1, tc.steps + 1):  # step t uses the sequences of batch t - 1
        t0 = time.perf_counter()
        model.zero_grad_buffer()
        optimizer.zero_grad()
        it = micro_batches(data, step - 1, tc.global_batch_size, tc.micro_batch_size, rank.dp_rank, rank.dp_size)
        reports = forward_backward(
            forward_step_func=_forward_step,
            data_iterator=it,
            model=[model],
            num_microbatches=n_micro,
            seq_length=mc.decoder.seq_length,
            micro_batch_size=tc.micro_batch_size,
            forward_only=False,
        )
        hook("step", step, rank.rank)
        ok, grad_norm, _ = optimizer.step()
        scheduler.step(increment=1)
        loss = _step_loss(reports, rank)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss} at step {step}; lower train.lr (peak now {scheduler.max_lr:.3g})"
            )
        dt = time.perf_counter() - t0
        images = sum(len(data.sequences[i].images) for i in step_indices(len(data), tc.global_batch_size, step - 1))
        row = {
            "step": step,
            "loss": loss,
            "lr": optimizer.param_groups[0]["lr"],
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "step_time_s": dt,
            "tokens_per_s": tokens_per_step / dt,
            "images_per_s": images / dt,
            "elapsed_s": time.perf_counter() - clock,
        }
        log.append(row | (moe.collect() if moe else {}))
        bar.update(1)
        if step % tc.log_interval == 0 or step == start + 1:
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{row['lr']:.2e}")
        stopping = step < tc.steps and stop(step)
        at_end = step == tc.steps and tc.save_at_end
        if stopping or at_end or (tc.save_interval and step % tc.save_interval == 0):
            t0 = time.perf_counter()
            path = save(step)
            if rank.is_main:
                bar.write(f"train: saved {path} in {time.perf_counter() - t0:.1f} s")
        if stopping:
            break
    bar.close()
    return step


def _facts(cfg: RunConfig, rank: Rank, inputs: dict[str, Path]) -> dict:
    """What a resumable checkpoint records of its run (:func:`mm1.train.state.check_compatible`)."""
    hashes = [{k: provenance.hash_path(p) for k, p in inputs.items()} if rank.is_main else None]
    torch.distributed.broadcast_object_list(hashes, src=0)  # one rank reads the inputs
    par = cfg.parallel
    return {
        "model": cfg.model.model_dump(mode="json"),
        "train": cfg.train.model_dump(mode="json"),
        "inputs": hashes[0],
        "parallel": {"distributed_optimizer": par.distributed_optimizer},  # its state has another format
        "layout": {"world_size": rank.world_size, "tp": par.tp, "pp": par.pp, "ep": par.ep},
    }


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
            config={k: getattr(cfg, k).model_dump(mode="json") for k in SECTIONS},
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

    Resumable checkpoints go to ``out_dir/resume`` every ``train.save_interval`` steps and at the end
    (:mod:`mm1.train.state`); with ``train.resume`` a run continues from the newest one and repeats
    the uninterrupted loss curve bit for bit (same layout). A preemption signal
    (:mod:`mm1.train.preempt`), or reaching step ``stop_after`` (for tests), saves one and raises
    :class:`~mm1.train.preempt.Preempted` (exit code 75: requeue me) instead of finishing.
    ``init`` (see :func:`build`) applies to a fresh start only; a resumed run has its own weights.
    While it runs, ``out_dir`` is locked (:mod:`mm1.outlock`): a second run on it fails at once.
    """
    out_dir = Path(out_dir)
    tok = TextTokenizer(tokenizer_path)
    inputs = {"packed": Path(packed_path), "tokenizer": Path(tokenizer_path)}
    inputs |= {f"init_{'+'.join(parts or ('all',))}": Path(ckpt) for ckpt, parts in init or []}
    hook = signal_hook()
    with outlock.hold(out_dir):
        hook("start", 0, outlock.job_rank())
        return _train_locked(cfg, tok, Path(packed_path), out_dir, init, inputs, stop_after, hook)


def _train_locked(cfg: RunConfig, tok, packed_path: Path, out_dir: Path, init, inputs, stop_after, hook) -> TrainResult:
    """:func:`train` once it holds ``out_dir``'s lock."""
    tc, mc = cfg.train, cfg.model
    resume_dir = out_dir / RESUME
    with StopSignals() as signals, distributed(cfg.parallel, tc.seed) as rank:
        data = PackedData.load(packed_path, mc.decoder.seq_length, mc.encoder.image_size)
        facts = _facts(cfg, rank, inputs)
        found = state.resumable(resume_dir, facts) if tc.resume else None  # another run's: moved aside
        model = wrap_ddp(build(cfg, tok, None if found else init).to(rank.device), cfg.parallel)
        lr, weight_decay = optimizer_hparams(cfg, vocab_size=tok.vocab_size)  # config, or MM1's law
        optimizer, scheduler = build_optimizer(model, cfg.train, lr, weight_decay)
        if found is None:
            state.clear(resume_dir)  # a fresh start replaces older resumable checkpoints
        restored = state.load(found, model.module, optimizer, scheduler, facts) if found else None
        log = MetricsLog(out_dir, restored.rows if restored else [], main=rank.is_main)

        def save(step: int) -> Path:
            hook("save", step, rank.rank)
            return state.save(resume_dir, step, model.module, optimizer, scheduler, facts, log.rows, tc.keep_last)

        def stop(step: int) -> bool:
            return signals.agreed() or step == stop_after

        start = restored.step if restored else 0
        try:
            last = _train_loop(cfg, data, model, optimizer, scheduler, rank, log, start, stop, save, hook)
        finally:
            log.close()
        metrics = log.frame()
        if last == tc.steps:
            extra = {"peak_lr": lr, "weight_decay": weight_decay, "resumed_from": str(found) if found else None}
            ckpt = _write_outputs(cfg, tok, model.module, metrics, rank, out_dir, inputs, extra)
        else:  # saved; report before the shutdown barrier: torchrun ends the other ranks as soon as one
            report_exit(REQUEUE_EXIT, rank.rank)  # exits 75, and rank 0 must not die unreported
    if last < tc.steps:
        signals.hand_over()  # e.g. submitit's checkpoint-and-requeue
        raise Preempted(last)
    report_exit(0, rank.rank)
    return TrainResult(checkpoint=ckpt, metrics=metrics, resumed_from=start)
