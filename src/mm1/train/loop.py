"""The training loop of every stage that trains: steps, resumable checkpoints, preemption, metrics.

A stage (:mod:`mm1.train.trainer` for the multimodal/LLM/SFT stages, :mod:`mm1.train.encoder_trainer`
for CLIP/AIM) builds its data, model and optimizer, and hands the loop an :class:`Objective`: the
forward and backward passes of one step. Everything else is here, once::

    with TrainingRun(cfg, SECTIONS, out_dir, inputs) as run:   # out_dir locked, signals noted, ranks up
        model = ...  # a fresh start (run.found is None) may load init weights
        optimizer, scheduler = ...
        run.restore(model, optimizer, scheduler)                # from out_dir/resume, or start over
        if run.train(objective):                                 # False: stopped early, saved
            ...write the stage's outputs...
    # leaving the block after an early stop raises Preempted (exit 75: requeue me)

Resumable checkpoints go to ``out_dir/resume`` (:mod:`mm1.train.state`) every ``train.save_interval``
steps, every ``train.save_every_minutes``, at the end (``train.save_at_end``) and at a stop; with
``train.resume`` a run continues from the newest one rank 0 sees and repeats the uninterrupted loss
curve bit for bit (same layout). A preemption signal (:mod:`mm1.train.signals`) or the SLURM job's
time limit drawing near (``train.stop_minutes_before_limit``) stops every rank after the same step;
after the save the run exits 75 and, inside a SLURM batch job, requeues it
(:func:`mm1.parallel.supervise.requeue_slurm_job`). Decisions that read a clock (a timed save, the
time limit) are rank 0's, agreed by all ranks in the one collective after each step. Per-step rows go to
DVCLive's files as they come (:class:`~mm1.train.metrics.MetricsLog`); the stage writes metrics.csv.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from mm1 import outlock, provenance
from mm1.config import RunConfig
from mm1.parallel.launch import under_launcher
from mm1.parallel.setup import Rank, distributed
from mm1.parallel.supervise import job_end_time, requeue_slurm_job
from mm1.progress import progress
from mm1.train import state
from mm1.train.metrics import MetricsLog
from mm1.train.signals import REQUEUE_EXIT, Preempted, StopSignals, agree, report_exit, signal_hook

RESUME = "resume"  # out_dir/resume: resumable checkpoints; not a declared output, so reruns keep it
now = time.time  # the clock of timed saves and of the time limit (rank 0's is read); tests replace it


@dataclass(frozen=True)
class Objective:
    """What one stage's step does; the loop does the rest (optimizer step, metrics, saves, stops)."""

    name: str  # the progress bar's label
    forward_backward: Callable[[int], float]
    """Step t (1-based): zero-grad is done; run forward and backward of the step's micro-batches and
    return its loss, the same on every rank (a collective)."""
    throughput: Callable[[int, float], dict[str, float]]
    """(step, its seconds) -> the rate columns of its metrics row (tokens_per_s, images_per_s, ...)."""
    extra: Callable[[], dict[str, float]] | None = None
    """More columns after each step (a collective, e.g. MoE router statistics)."""


def facts(cfg: RunConfig, sections: tuple[str, ...], rank: Rank, inputs: dict[str, Path]) -> dict:
    """What a resumable checkpoint records of its run (:func:`mm1.train.state.check_compatible`
    compares them): the config ``sections`` the stage reads, its inputs' hashes, the layout."""
    par = cfg.parallel
    hashes = [{k: provenance.hash_path(p) for k, p in inputs.items()} if rank.is_main else None]
    torch.distributed.broadcast_object_list(hashes, src=0)  # one rank reads the inputs
    config = provenance.sections(cfg, [k for k in sections if k != "parallel"])
    return config | {
        "inputs": hashes[0],
        "parallel": {"distributed_optimizer": par.distributed_optimizer},  # its state has another format
        "layout": {"world_size": rank.world_size, "tp": par.tp, "pp": par.pp, "ep": par.ep},
    }


class TrainingRun:
    """One run of a training stage in ``out_dir``: see the module docstring for its use.

    Entering locks ``out_dir`` (:mod:`mm1.outlock`), notes preemption signals and sets up the
    process groups, then finds the checkpoint to resume (:attr:`found`: None for a fresh start).
    ``stop_after`` (tests) stops after that step as a signal would.
    """

    def __init__(
        self,
        cfg: RunConfig,
        sections: tuple[str, ...],
        out_dir: Path,
        inputs: dict[str, Path],
        *,
        stop_after: int | None = None,
    ) -> None:
        self.cfg, self.sections, self.out_dir, self.inputs = cfg, sections, Path(out_dir), inputs
        self.resume_dir = self.out_dir / RESUME
        self.stop_after = stop_after
        self.hook = signal_hook()  # the fault tests' SignalAt, or a no-op
        self.found: Path | None = None
        self.start = self.last = 0
        self.stopped = False  # set by train(): True when it stopped before train.steps (and saved)
        self._lock = contextlib.ExitStack()
        self._inner = contextlib.ExitStack()

    def __enter__(self) -> TrainingRun:
        with contextlib.ExitStack() as undo:
            undo.enter_context(self._lock)
            undo.enter_context(self._inner)
            self._lock.enter_context(outlock.hold(self.out_dir))
            self.hook("start", 0, outlock.job_rank())
            self.signals = self._inner.enter_context(StopSignals())
            self.rank: Rank = self._inner.enter_context(distributed(self.cfg.parallel, self.cfg.train.seed))
            self.facts = facts(self.cfg, self.sections, self.rank, self.inputs)
            self.found = state.resumable(self.resume_dir, self.facts) if self.cfg.train.resume else None
            undo.pop_all()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        stopped = exc_type is None and self.stopped
        try:
            if stopped:  # report before the shutdown barrier: torchrun ends the other ranks as soon as
                report_exit(REQUEUE_EXIT, self.rank.rank)  # one exits 75, and rank 0 must not die unreported
            self._inner.__exit__(exc_type, exc, tb)
            if stopped:
                self.signals.hand_over()  # e.g. submitit's checkpoint-and-requeue
                if not under_launcher():  # under torchrun/srun the launcher asks (mm1.parallel.launch)
                    requeue_slurm_job()
                raise Preempted(self.last)
            if exc_type is None:
                report_exit(0, self.rank.rank)
        finally:
            self._lock.__exit__(exc_type, exc, tb)

    def restore(self, model, optimizer, scheduler, generators: dict[str, torch.Generator] | None = None) -> None:
        """Load :attr:`found` into the DDP ``model``, its optimizer and scheduler, or, on a fresh start,
        remove older resumable checkpoints; open the metrics log. ``generators``: the stage's own RNG
        streams beyond torch's, numpy's and python's, saved and restored with them."""
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.generators = generators or {}
        if self.found is None:
            state.clear(self.resume_dir)
        restored = (
            state.load(self.found, model.module, optimizer, scheduler, self.facts, self.generators)
            if self.found
            else None
        )
        self.start = self.last = restored.step if restored else 0
        self.log = MetricsLog(self.out_dir, restored.rows if restored else [], main=self.rank.is_main)

    def save(self, step: int) -> Path:
        self.hook("save", step, self.rank.rank)
        tc = self.cfg.train
        return state.save(
            self.resume_dir,
            step,
            self.model.module,
            self.optimizer,
            self.scheduler,
            self.facts,
            self.log.rows,
            tc.keep_last,
            self.generators,
        )

    def train(self, objective: Objective) -> bool:
        """Run steps ``start+1 .. train.steps``; True when training reached its last step, False when
        a signal (or ``stop_after``) stopped it after a saved step.

        After each step every rank agrees on a stop and a timed save (:meth:`_decide`, a collective),
        then saves at a stop, every ``train.save_interval`` steps, when ``train.save_every_minutes``
        have passed since the last save, and at the end (``train.save_at_end``).
        """
        tc, rank = self.cfg.train, self.rank
        bar = progress(total=tc.steps, initial=self.start, desc=objective.name, unit="step", disable=not rank.is_main)
        rows = self.log.rows
        self._clock = time.perf_counter() - (rows[-1]["elapsed_s"] if rows else 0.0)  # elapsed_s goes on
        self._saved_at, self._stop_at = now(), self._time_limit()
        for step in range(self.start + 1, tc.steps + 1):
            row = self._step(objective, step)
            bar.update(1)
            if step % tc.log_interval == 0 or step == self.start + 1:
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}")
            stopping, timed = self._decide(step)
            at_end = step == tc.steps and tc.save_at_end
            self.last = step
            if stopping or at_end or timed or (tc.save_interval and step % tc.save_interval == 0):
                t0 = time.perf_counter()
                path = self.save(step)
                self._saved_at = now()
                if rank.is_main:
                    bar.write(f"{objective.name}: saved {path} in {time.perf_counter() - t0:.1f} s")
            if stopping:
                break
        bar.close()
        self.log.close()
        self.stopped = self.last < tc.steps
        return not self.stopped

    def _time_limit(self) -> float | None:
        """Rank 0: when to stop before the SLURM job's time limit (``train.stop_minutes_before_limit``
        earlier); None elsewhere, outside a job with a limit, or when that option is 0."""
        margin = 60 * self.cfg.train.stop_minutes_before_limit
        end = job_end_time() if margin and self.rank.is_main else None
        if end is None:
            return None
        if end - now() <= margin:
            print(
                f"mm1 train: warning: the job's time limit is {(end - now()) / 60:.1f} min away, within "
                f"train.stop_minutes_before_limit={margin / 60:g}: each run of this job stops after one step; "
                "ask for a longer time limit or lower train.stop_minutes_before_limit",
                flush=True,
            )
        return end - margin

    def _decide(self, step: int) -> tuple[bool, bool]:
        """After ``step``: (stop now, save now because ``train.save_every_minutes`` passed), the same
        on every rank. One collective agrees on any rank's signal and on rank 0's clock (a timed save,
        the time limit); the other ranks' clocks are never read, so they cannot disagree."""
        tc, main = self.cfg.train, self.rank.is_main
        t = now() if main else 0.0
        due = main and tc.save_every_minutes > 0 and t - self._saved_at >= 60 * tc.save_every_minutes
        late = main and self._stop_at is not None and t >= self._stop_at
        signalled, due, late = agree(self.signals.signum is not None, due, late)
        stopping = step < tc.steps and (signalled or late or step == self.stop_after)
        if stopping and late and main:
            print(f"mm1 train: the SLURM job's time limit is near: stopping after step {step} to save", flush=True)
        return stopping, due

    def _step(self, objective: Objective, step: int) -> dict:
        """One optimizer step; its metrics row, logged."""
        t0 = time.perf_counter()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        loss = objective.forward_backward(step)
        self.hook("step", step, self.rank.rank)
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(increment=1)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"{objective.name}: loss became {loss} at step {step}; "
                f"lower train.lr (peak now {self.scheduler.max_lr:.3g})"
            )
        dt = time.perf_counter() - t0
        row = {
            "step": step,
            "loss": loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "step_time_s": dt,
            **objective.throughput(step, dt),
            "elapsed_s": time.perf_counter() - self._clock,
        }
        self.log.append(row | (objective.extra() if objective.extra else {}))
        return row

    def metrics(self) -> pl.DataFrame:
        """The rows of steps 1..last, restored ones included."""
        return self.log.frame()
