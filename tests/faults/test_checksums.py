"""Silent corruption: every checkpoint carries the sha256 of each of its files (``checksums.json``),
recorded before the folder takes its name; every load path checks it before megatron reads a byte and
refuses a changed, truncated, missing or unrecorded file naming it. The control shows the flip is
real: megatron alone loads the changed weight without a word."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from faultkit import assert_intact, snapshot

from mm1 import cli
from mm1.config import ParallelConfig
from mm1.parallel.setup import distributed
from mm1.train import checkpoint, checksums, safe_load
from mm1.train.checksums import MANIFEST, CheckpointChecksumError
from mm1.train.trainer import train
from tinykit import TINY, tiny, train_inputs

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import dist_checkpointing

pytestmark = pytest.mark.faults(item=4)

SETS = ("train.steps=2", "train.save_interval=2")
STEP = "step_000002"


@pytest.fixture(scope="module")
def run(tiny_world, tmp_path_factory) -> Path:
    """A finished tiny run: ``checkpoint/`` and ``resume/step_000002``."""
    out = tmp_path_factory.mktemp("checksums") / "run"
    train(tiny(*SETS), tiny_world["packed"], tiny_world["tokenizer"], out)
    return out


def flip_in_a_weight(ckpt: Path) -> tuple[Path, str]:
    """Flip one byte in the middle of the largest tensor's stored bytes: (the shard, the tensor's key)."""
    metadata = safe_load.read_metadata(ckpt / ".metadata")
    index, info = max(metadata.storage_data.items(), key=lambda item: item[1].length)
    flip(ckpt / info.relative_path, info.offset + info.length // 2)
    return ckpt / info.relative_path, index.fqn


def flip(file: Path, at: int | None = None) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x10
    file.write_bytes(bytes(data))


def test_every_checkpoint_file_is_recorded_and_checks(run):
    for ckpt in (run / "checkpoint", run / "resume" / STEP):
        recorded = json.loads((ckpt / MANIFEST).read_text())["files"]
        on_disk = sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file())
        assert sorted([*recorded, MANIFEST]) == on_disk
        assert any(name.endswith(".distcp") for name in recorded) and ".metadata" in recorded
        checksums.check(ckpt)
    assert {"model.json", "common.pt"} <= set(json.loads((run / "checkpoint" / MANIFEST).read_text())["files"])
    assert {"state.json", "metrics.csv", "rng/rank_00000.pt"} <= set(
        json.loads((run / "resume" / STEP / MANIFEST).read_text())["files"]
    )


def test_a_flipped_byte_in_any_file_of_a_model_checkpoint_is_refused_naming_it(run, tiny_model, tmp_path):
    names = checksums.recorded_files(run / "checkpoint")
    with distributed(ParallelConfig(), seed=0):
        model = tiny_model(*SETS)
        before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
        for name in names:
            ckpt = tmp_path / name.replace(".", "_")
            shutil.copytree(run / "checkpoint", ckpt)
            flip(ckpt / name)
            with pytest.raises(CheckpointChecksumError) as excinfo:
                checkpoint.load_into(model, ckpt)
            assert excinfo.value.file == str(ckpt / name), name
            assert "contents changed after the checkpoint was saved" in str(excinfo.value)
            assert "\n" not in str(excinfo.value)
        after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items()), "a refused checkpoint changed a weight"


def test_control_megatron_alone_loads_the_flipped_weight_silently(run, tmp_path):
    """What the check prevents: the flip changes one tensor, and megatron's loader reads it as it is."""
    shutil.copytree(run / "checkpoint", tmp_path / "ckpt")
    _, key = flip_in_a_weight(tmp_path / "ckpt")
    with distributed(ParallelConfig(), seed=0):
        good = dist_checkpointing.load_plain_tensors(str(run / "checkpoint"))
        bad = dist_checkpointing.load_plain_tensors(str(tmp_path / "ckpt"))
    changed = [k for k in good if not torch.equal(good[k], bad[k])]
    assert changed == [key]


def test_mm1_train_init_refuses_a_flipped_weight_in_one_line(run, tiny_world, tmp_path, capsys):
    """The case found in the issue: ``mm1 train --init`` trained on a flipped byte with exit 0."""
    shutil.copytree(run / "checkpoint", tmp_path / "ckpt")
    shard, _ = flip_in_a_weight(tmp_path / "ckpt")
    sets = [a for s in [*TINY, *SETS] for a in ("--set", s)]
    args = ["train", *train_inputs(tiny_world)]
    code = cli.main([*args, "--out", str(tmp_path / "out"), "--init", str(tmp_path / "ckpt"), *sets])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert f"{shard}: its contents changed after the checkpoint was saved" in err and "restore" in err
    assert not (tmp_path / "out" / "checkpoint").exists()


def test_a_flipped_byte_in_a_resumable_checkpoint_stops_the_resume_and_keeps_it(run, tiny_world, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run / "resume", out / "resume")
    shard, _ = flip_in_a_weight(out / "resume" / STEP)
    before = snapshot(out / "resume")
    with pytest.raises(CheckpointChecksumError) as excinfo:
        train(tiny(*SETS, "train.steps=4"), tiny_world["packed"], tiny_world["tokenizer"], out)
    assert excinfo.value.file == str(shard)
    assert_intact(out / "resume", before)  # neither moved aside nor cleared for a fresh start


def test_truncated_missing_and_unrecorded_files_are_named_and_tool_markers_ignored(run, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run / "checkpoint", ckpt)
    (ckpt / ".snakemake_timestamp").touch()  # Snakemake marks directory() outputs after the write
    checksums.check(ckpt)
    common = (ckpt / "common.pt").read_bytes()
    (ckpt / "common.pt").write_bytes(common[:-7])
    with pytest.raises(
        CheckpointChecksumError, match=rf"common\.pt: {len(common) - 7} bytes, but {len(common)} were recorded"
    ):
        checksums.check(ckpt)
    (ckpt / "common.pt").unlink()
    with pytest.raises(CheckpointChecksumError, match=r"common\.pt: missing, but recorded"):
        checksums.check(ckpt)
    (ckpt / "common.pt").write_bytes(common)
    (ckpt / "extra.distcp").write_bytes(b"x")
    with pytest.raises(CheckpointChecksumError, match=r"extra\.distcp: not one of the files recorded"):
        checksums.check(ckpt)
    (ckpt / "extra.distcp").unlink()
    (ckpt / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointChecksumError, match=rf"{MANIFEST}: not a readable checksum manifest"):
        checksums.check(ckpt)


def test_a_checkpoint_without_checksums_is_refused_with_the_command_that_records_them(run, tiny_model, tmp_path):
    """Policy for checkpoints written before checksums: refused, naming the folder; a user who trusts
    it records its checksums with the command the message gives, and it loads."""
    ckpt = tmp_path / "old"
    shutil.copytree(run / "checkpoint", ckpt)
    (ckpt / MANIFEST).unlink()
    with pytest.raises(CheckpointChecksumError, match="written before mm1 recorded checksums") as excinfo:
        checkpoint.read_meta(ckpt)
    command = str(excinfo.value).split("record them with: ", 1)[1]
    assert command.startswith("python -c "), command
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with distributed(ParallelConfig(), seed=0):
        checkpoint.load_into(tiny_model(*SETS), ckpt)


def test_the_manifest_is_written_before_the_folder_takes_its_name(run, tiny_model, tmp_path, monkeypatch):
    """A save whose manifest cannot be written leaves no folder under the final name (the old one stays)."""
    shutil.copytree(run / "checkpoint", tmp_path / "ckpt")
    before = snapshot(tmp_path / "ckpt")

    def full(folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checksums, "seal", full)
    meta = json.loads((run / "checkpoint" / "model.json").read_text())
    with distributed(ParallelConfig(), seed=0):
        with pytest.raises(checkpoint.CheckpointWriteError, match="No space left on device.*previous .* is intact"):
            checkpoint.save(tiny_model(*SETS), meta, tmp_path / "ckpt")
    assert_intact(tmp_path / "ckpt", before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# Torn down after the error as the CLI's ``distributed()`` does (a live gloo group can abort at exit).
WORKER = """
import sys, torch
from mm1.parallel.setup import shutdown
from mm1.train import checksums, safe_load
torch.distributed.init_process_group("gloo")
try:
    safe_load.verify_on_every_rank(sys.argv[1])
except checksums.CheckpointChecksumError as exc:
    print("changed:", exc.file, flush=True)
    shutdown(clean=False)
    sys.exit(3)
"""


@pytest.mark.multiprocess
def test_each_rank_hashes_its_share_and_a_change_one_rank_finds_stops_every_rank(run, tmp_path):
    ckpt = tmp_path / STEP
    shutil.copytree(run / "resume" / STEP, ckpt)
    second = checksums.recorded_files(ckpt)[1::2][0]  # a file that rank 1 hashes, rank 0 does not
    flip(ckpt / second)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(ckpt)], env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, text=True
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [3, 3], outs
    assert f"changed: {ckpt / second}" in outs[1] and f"changed: {ckpt}\n" in outs[0], outs
