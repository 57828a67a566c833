"""Resumable checkpoints: a stopped run resumes from its newest complete checkpoint and repeats the
uninterrupted loss curve bit for bit; checkpoints of another run are refused; metrics rows and the
DVCLive history hold every step once."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import polars as pl
import pytest
import torch
from trainkit import tiny

from mm1.config import ParallelConfig
from mm1.parallel.setup import distributed
from mm1.train import state
from mm1.train.preempt import REQUEUE_EXIT, Preempted
from mm1.train.trainer import train

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import dist_checkpointing

CURVE = ["loss", "lr", "grad_norm"]  # deterministic columns (the timings are not)


def run(cfg, world, out: Path, stop_after: int | None = None):
    return train(cfg, world["packed"], world["tokenizer"], out, stop_after=stop_after)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    with distributed(ParallelConfig(), seed=0):
        return dist_checkpointing.load_plain_tensors(str(ckpt))


@pytest.mark.parametrize("optimizer", ["plain", "distributed"])
def test_stopped_run_resumes_from_newest_complete_checkpoint_bit_for_bit(world, tmp_path, optimizer):
    # The distributed optimizer on one rank still takes megatron's sharded-state load path (see
    # state._load_optimizer for the two fixes it needs); the 2-process run is in test_preemption.
    cfg = tiny(
        "train.save_interval=2", "train.keep_last=2", f"parallel.distributed_optimizer={optimizer == 'distributed'}"
    )
    whole = run(cfg, world, tmp_path / "whole")

    with pytest.raises(Preempted) as stopped:
        run(cfg, world, tmp_path / "stopped", stop_after=5)
    assert stopped.value.code == REQUEUE_EXIT and stopped.value.step == 5
    resume = tmp_path / "stopped" / "resume"
    assert [p.name for p in state.complete(resume)] == ["step_000004", "step_000005"]  # keep_last=2
    assert (resume / "latest").read_text().strip() == "step_000005"
    assert not (tmp_path / "stopped" / "metrics.csv").exists()  # stage outputs only when finished

    # Make step 5 look like a save that died half-way: the loader must fall back to step 4, and the
    # metrics rows of step 5 that the stopped run had already logged must not appear twice.
    (resume / "step_000005").rename(resume / "step_000005.partial")
    assert state.latest(resume) == resume / "step_000004"

    resumed = run(cfg, world, tmp_path / "stopped")
    assert resumed.resumed_from == 4
    got = pl.read_csv(tmp_path / "stopped" / "metrics.csv")
    want = pl.read_csv(tmp_path / "whole" / "metrics.csv")
    assert got["step"].to_list() == list(range(1, 7))
    for column in CURVE:
        assert got[column].to_list() == want[column].to_list(), column  # exact, not approximately
    assert resumed.metrics["loss"].to_list() == whole.metrics["loss"].to_list()
    a, b = weights(whole.checkpoint), weights(resumed.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert [p.name for p in state.complete(resume)] == ["step_000004", "step_000006"]
    assert not list(resume.glob("*.partial")) and (resume / "latest").read_text().strip() == "step_000006"
    history = pl.read_csv(tmp_path / "stopped" / "dvclive" / "plots" / "metrics" / "loss.tsv", separator="\t")
    assert history["step"].to_list() == list(range(1, 7))
    assert history["loss"].to_list() == want["loss"].to_list()
    summary = json.loads((tmp_path / "stopped" / "dvclive" / "metrics.json").read_text())
    assert summary["step"] == 6 and summary["loss"] == want["loss"][-1]


def test_finished_run_resumes_to_the_same_outputs_without_training(world, tmp_path):
    cfg = tiny("train.steps=2")
    first = run(cfg, world, tmp_path)
    again = run(cfg, world, tmp_path)
    assert again.resumed_from == 2
    assert again.metrics["loss"].to_list() == first.metrics["loss"].to_list()


def test_without_save_at_end_a_finished_run_keeps_no_resumable_checkpoint_and_trains_again(world, tmp_path):
    cfg = tiny("train.steps=4", "train.save_interval=3", "train.save_at_end=false")
    first = run(cfg, world, tmp_path)
    assert [p.name for p in state.complete(tmp_path / "resume")] == ["step_000003"]  # the periodic one only
    again = run(cfg, world, tmp_path)
    assert again.resumed_from == 3  # redoes step 4 from the periodic checkpoint
    assert again.metrics["loss"].to_list() == first.metrics["loss"].to_list()


def test_checkpoint_of_another_run_is_moved_aside_naming_the_fields(world, tmp_path, capsys):
    """A changed config (why Snakemake reruns the stage) starts over; the old checkpoints are kept."""
    with pytest.raises(Preempted):
        run(tiny(), world, tmp_path, stop_after=1)
    changed = tiny("model.decoder.ffn_hidden_size=96", "train.lr=0.001", "train.log_interval=1", "train.steps=2")
    assert run(changed, world, tmp_path).resumed_from == 0
    message = capsys.readouterr().out
    assert "model.decoder.ffn_hidden_size: checkpoint 128, now 96" in message
    assert "train.lr: checkpoint None, now 0.001" in message
    assert "log_interval" not in message  # allowed to change
    (stale,) = tmp_path.glob("resume.stale-*")
    assert [p.name for p in state.complete(stale)] == ["step_000001"]

    fresh = run(tiny("model.decoder.ffn_hidden_size=96", "train.steps=3", "train.resume=false"), world, tmp_path)
    assert fresh.resumed_from == 0
    assert [p.name for p in state.complete(tmp_path / "resume")] == ["step_000003"]  # the changed run's are gone


def test_latest_ignores_partial_folders_and_a_stale_pointer(tmp_path):
    for name in ("step_000002", "step_000010", "step_000012.partial", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "latest").write_text("step_000002\n")  # the run died before updating it
    assert state.latest(tmp_path) == tmp_path / "step_000010"
    assert state.latest(tmp_path / "absent") is None


def test_moe_run_logs_aux_losses_and_expert_load(world, tmp_path):
    cfg = tiny("train.steps=2", "model.moe.num_experts=4", "model.moe.layer_freq=1")
    metrics = run(cfg, world, tmp_path).metrics
    for column in ("moe_load_balancing_loss", "moe_z_loss", "moe_load_imbalance", "images_per_s", "tokens_per_s"):
        values = metrics[column].to_list()
        assert len(values) == 2 and all(v > 0 for v in values), (column, values)
    assert all(v >= 1 for v in metrics["moe_load_imbalance"])  # largest expert's share / the mean share
