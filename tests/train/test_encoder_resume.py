"""The encoder stage (CLIP, AIM) trains through the loop every training stage shares: a SIGTERM
inside a step saves a resumable checkpoint and stops with exit 75 (requeue me); running it again
resumes and ends on the uninterrupted loss curve and weights, bit for bit.

The signal is real: the loop raises it at step 3 (:class:`~mm1.train.signals.SignalAt`, to this
process alone), so where it lands never depends on the clock. The signal handling across ranks and
the launcher's exit code are the same code as the trainer's (``tests/faults/test_preempt.py``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import polars as pl
import pytest
import torch

from mm1.config import ParallelConfig
from mm1.parallel.setup import distributed
from mm1.train import state
from mm1.train.encoder_trainer import train_encoder
from mm1.train.loop import RESUME
from mm1.train.signals import REQUEUE_EXIT, TEST_SIGNAL_ENV, Preempted
from tinykit import WORLD, tiny

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import dist_checkpointing

STEPS = 5
ENCODER = [f"train.steps={STEPS}", "train.warmup_steps=2", "train.lr=3e-3", "model.encoder.clip.text_seq_length=24"]
CURVE = ["loss", "lr", "grad_norm"]  # deterministic columns (the timings are not)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    with distributed(ParallelConfig(), seed=0):
        return dist_checkpointing.load_plain_tensors(str(ckpt))


@pytest.mark.parametrize("objective", ["clip", "aim"])  # AIM: its prefix-length generator resumes too
def test_sigterm_inside_a_step_saves_and_the_rerun_resumes_bit_for_bit(tiny_world, tmp_path, monkeypatch, objective):
    cfg = tiny(*WORLD, *ENCODER, f"model.encoder.objective={objective}")
    whole = train_encoder(cfg, tiny_world["manifest"], tiny_world["tokenizer"], tmp_path / "whole")

    job = tmp_path / "job"
    monkeypatch.setenv(TEST_SIGNAL_ENV, "step:3:SIGTERM:0:self")
    with pytest.raises(Preempted) as stopped:
        train_encoder(cfg, tiny_world["manifest"], tiny_world["tokenizer"], job)
    assert stopped.value.code == REQUEUE_EXIT and stopped.value.step == 3  # finished the step, then stopped
    resume = job / RESUME
    assert [p.name for p in state.complete(resume)] == ["step_000003"]
    assert json.loads((resume / "step_000003" / state.STATE).read_text())["step"] == 3
    assert not (job / "metrics.csv").exists() and not (job / "checkpoint").exists()  # outputs only when finished

    monkeypatch.delenv(TEST_SIGNAL_ENV)
    resumed = train_encoder(cfg, tiny_world["manifest"], tiny_world["tokenizer"], job)
    for column in CURVE:
        assert resumed[column].to_list() == whole[column].to_list(), column  # exact, not approximately
    got, want = pl.read_csv(job / "metrics.csv"), pl.read_csv(tmp_path / "whole" / "metrics.csv")
    assert got["step"].to_list() == list(range(1, STEPS + 1)) and got.columns == want.columns
    assert got["loss"].to_list() == want["loss"].to_list()
    a, b = weights(tmp_path / "whole" / "checkpoint"), weights(job / "checkpoint")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    provenance = json.loads((job / "provenance.json").read_text())
    assert provenance["resumed_from"] == str(resume / "step_000003")
    history = pl.read_csv(job / "dvclive" / "plots" / "metrics" / "loss.tsv", separator="\t")
    assert history["step"].to_list() == list(range(1, STEPS + 1)), "DVCLive's loss history repeats or lacks steps"
    assert json.loads((job / "dvclive" / "metrics.json").read_text())["step"] == STEPS
    assert {"metrics.json", "encoder.png"} <= {p.name for p in job.iterdir()}
