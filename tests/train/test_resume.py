"""Resumable checkpoints: a stopped run resumes from its newest complete checkpoint and repeats the
uninterrupted loss curve bit for bit; checkpoints of another run are refused; metrics rows and the
DVCLive history hold every step once."""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from pathlib import Path

import polars as pl
import pytest
import torch

from mm1.config import ParallelConfig
from mm1.parallel.setup import distributed
from mm1.train import checkpoint, state
from mm1.train.signals import REQUEUE_EXIT, Preempted
from mm1.train.trainer import train
from tinykit import tiny

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import dist_checkpointing

CURVE = ["loss", "lr", "grad_norm"]  # deterministic columns (the timings are not)


def run(cfg, tiny_world, out: Path, stop_after: int | None = None):
    return train(cfg, tiny_world["packed"], tiny_world["tokenizer"], out, stop_after=stop_after)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    with distributed(ParallelConfig(), seed=0):
        return dist_checkpointing.load_plain_tensors(str(ckpt))


@pytest.mark.parametrize("optimizer", ["plain", "distributed"])
def test_stopped_run_resumes_from_newest_complete_checkpoint_bit_for_bit(tiny_world, tmp_path, optimizer):
    # The distributed optimizer on one rank still takes megatron's sharded-state load path (see
    # state._load_optimizer for the two fixes it needs); the 2-process run is in test_preemption.
    cfg = tiny(
        "train.save_interval=2", "train.keep_last=2", f"parallel.distributed_optimizer={optimizer == 'distributed'}"
    )
    whole = run(cfg, tiny_world, tmp_path / "whole")

    with pytest.raises(Preempted) as stopped:
        run(cfg, tiny_world, tmp_path / "stopped", stop_after=5)
    assert stopped.value.code == REQUEUE_EXIT and stopped.value.step == 5
    resume = tmp_path / "stopped" / "resume"
    assert [p.name for p in state.complete(resume)] == ["step_000004", "step_000005"]  # keep_last=2
    assert (resume / "latest").read_text().strip() == "step_000005"
    assert not (tmp_path / "stopped" / "metrics.csv").exists()  # stage outputs only when finished

    # Make step 5 look like a save that died half-way: the loader must fall back to step 4, and the
    # metrics rows of step 5 that the stopped run had already logged must not appear twice.
    (resume / "step_000005").rename(resume / "step_000005.partial")
    assert state.latest(resume) == resume / "step_000004"

    resumed = run(cfg, tiny_world, tmp_path / "stopped")
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


def test_finished_run_resumes_to_the_same_outputs_without_training(tiny_world, tmp_path):
    cfg = tiny("train.steps=2")
    first = run(cfg, tiny_world, tmp_path)
    again = run(cfg, tiny_world, tmp_path)
    assert again.resumed_from == 2
    assert again.metrics["loss"].to_list() == first.metrics["loss"].to_list()


def test_without_save_at_end_a_finished_run_keeps_no_resumable_checkpoint_and_trains_again(tiny_world, tmp_path):
    cfg = tiny("train.steps=4", "train.save_interval=3", "train.save_at_end=false")
    first = run(cfg, tiny_world, tmp_path)
    assert [p.name for p in state.complete(tmp_path / "resume")] == ["step_000003"]  # the periodic one only
    again = run(cfg, tiny_world, tmp_path)
    assert again.resumed_from == 3  # redoes step 4 from the periodic checkpoint
    assert again.metrics["loss"].to_list() == first.metrics["loss"].to_list()


def test_checkpoint_of_another_run_is_moved_aside_naming_the_fields(tiny_world, tmp_path, capsys):
    """A changed config (why Snakemake reruns the stage) starts over; the old checkpoints are kept."""
    with pytest.raises(Preempted):
        run(tiny(), tiny_world, tmp_path, stop_after=1)
    changed = tiny("model.decoder.ffn_hidden_size=96", "train.lr=0.001", "train.log_interval=1", "train.steps=2")
    assert run(changed, tiny_world, tmp_path).resumed_from == 0
    message = capsys.readouterr().out
    assert "model.decoder.ffn_hidden_size: checkpoint 128, now 96" in message
    assert "train.lr: checkpoint None, now 0.001" in message
    assert "log_interval" not in message  # allowed to change
    (stale,) = tmp_path.glob("resume.stale-*")
    assert [p.name for p in state.complete(stale)] == ["step_000001"]

    fresh = run(tiny("model.decoder.ffn_hidden_size=96", "train.steps=3", "train.resume=false"), tiny_world, tmp_path)
    assert fresh.resumed_from == 0
    assert [p.name for p in state.complete(tmp_path / "resume")] == ["step_000003"]  # the changed run's are gone


def test_latest_ignores_partial_folders_and_a_stale_pointer(tmp_path):
    for name in ("step_000002", "step_000010", "step_000012.partial", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "latest").write_text("step_000002\n")  # the run died before updating it
    assert state.latest(tmp_path) == tmp_path / "step_000010"
    assert state.latest(tmp_path / "absent") is None


def test_moe_run_logs_aux_losses_and_expert_load(tiny_world, tmp_path):
    cfg = tiny("train.steps=2", "model.moe.num_experts=4", "model.moe.layer_freq=1")
    metrics = run(cfg, tiny_world, tmp_path).metrics
    for column in ("moe_load_balancing_loss", "moe_z_loss", "moe_load_imbalance", "images_per_s", "tokens_per_s"):
        values = metrics[column].to_list()
        assert len(values) == 2 and all(v > 0 for v in values), (column, values)
    assert all(v >= 1 for v in metrics["moe_load_imbalance"])  # largest expert's share / the mean share


# --- a failed save names its real cause ---------------------------------------------------------------


def _write_error(tmp: Path, error: BaseException, intact: str = "the newest complete checkpoint X is intact") -> str:
    with pytest.raises(checkpoint.CheckpointWriteError) as excinfo:
        checkpoint.agree(error, tmp, "checkpoint step 4", intact)
    message = str(excinfo.value)
    assert "nan" not in message and "\n" not in message, message
    return message


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_or_quota_says_free_space_with_the_free_mib(tmp_path, code):
    (tmp_path / "step_000004.partial").mkdir()
    message = _write_error(tmp_path / "step_000004.partial", OSError(code, os.strerror(code)))
    assert f"{os.strerror(code)} (" in message and " MiB free on the file system of " in message, message
    assert "X is intact; free some space (or lower train.keep_last)" in message, message
    assert not (tmp_path / "step_000004.partial").exists()


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EIO])
def test_other_write_errors_never_say_free_space(tmp_path, code):
    message = _write_error(tmp_path / "step_000004.partial", OSError(code, os.strerror(code)))
    assert os.strerror(code) in message and "X is intact" in message, message
    assert "free some space" not in message and "MiB free" not in message, message
    assert ("writable" in message) == (code != errno.EIO), message


def test_a_vanished_output_folder_is_named_as_another_process_not_a_full_disk(tmp_path):
    resume = tmp_path / "resume"
    (resume / "step_000004.partial").mkdir(parents=True)
    message = _write_error(resume / "step_000004.partial", OSError(errno.ENOENT, os.strerror(errno.ENOENT)))
    assert "X is intact" in message, message  # only the partial folder went: what the rest holds is known
    assert f"the folder {resume / 'step_000004.partial'} disappeared" in message, message
    shutil.rmtree(resume)
    wrapped = RuntimeError("rank 0: FileNotFoundError('[Errno 2] No such file or directory: ...')")  # as megatron's
    message = _write_error(resume / "step_000004.partial", wrapped, intact="there is no earlier checkpoint")
    assert f"the folder {resume} disappeared while the checkpoint was written" in message, message
    assert "another mm1 run on the same --out?" in message, message
    assert "no earlier checkpoint" not in message and "free some space" not in message, message


def test_a_resume_folder_moved_away_during_a_save_is_reported_as_such(tiny_world, tmp_path, monkeypatch):
    """What a second run on the same --out did to the first (issue 21): its resume/ moved aside while the
    first was saving. The error says so -- not "nan MiB free", "no earlier checkpoint", "free some space"."""
    out = tmp_path / "run"
    real_save = state.dist_checkpointing.save

    def save(sharded, path, *args, **kwargs):
        result = real_save(sharded, path, *args, **kwargs)
        if Path(path).name == "step_000004.partial":  # the shards are written; the RNG files are next
            (out / "resume").rename(out / "resume.moved")
        return result

    monkeypatch.setattr(state.dist_checkpointing, "save", save)
    with pytest.raises(state.CheckpointWriteError) as excinfo:
        run(tiny("train.steps=4", "train.save_interval=2"), tiny_world, out)
    message = str(excinfo.value)
    assert f"could not write checkpoint step 4 to {out / 'resume' / 'step_000004.partial'}" in message, message
    assert f"the folder {out / 'resume'} disappeared while the checkpoint was written" in message, message
    for wrong in ("nan", "MiB free", "free some space", "no earlier checkpoint"):
        assert wrong not in message, message
    assert [p.name for p in state.complete(out / "resume.moved")] == ["step_000002"]
