"""Provenance beside every artifact, and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from mm1 import atomic, provenance
from mm1.config import dump, load


def _config() -> dict:
    return yaml.safe_load(dump(load(None, ["train.steps=77", "train.warmup_steps=3"])))


def _record(out: Path, inputs: dict[str, Path] | None = None, **kwargs) -> dict:
    path = provenance.record(out, "train", _config(), seed=1234, inputs=inputs, **kwargs)
    assert path == out / provenance.FILENAME
    return json.loads(path.read_text())


# --- provenance ---------------------------------------------------------------------------------


def test_record_writes_provenance_and_config(tmp_path: Path) -> None:
    data = tmp_path / "train.parquet"
    data.write_bytes(b"some pairs")
    info = _record(tmp_path / "out", {"pairs": data})
    assert info["stage"] == "train"
    assert info["seed"] == 1234
    assert info["config"] == _config()
    assert set(info["git"]) == {"commit", "dirty"}
    assert info["packages"]["torch"] == metadata.version("torch")
    assert info["packages"]["megatron-core"] == metadata.version("megatron-core")
    want = {"path": str(data), "sha256": hashlib.sha256(b"some pairs").hexdigest(), "method": "sha256"}
    assert info["inputs"]["pairs"] == want
    assert {"created", "python", "host"} <= set(info)
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text()) == _config()


def test_git_state_of_this_checkout(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    state = provenance.git_state(repo)
    if state["commit"] is not None:  # a source tree without .git or git is allowed
        assert len(state["commit"]) == 40
        assert isinstance(state["dirty"], bool)
    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None}


def test_input_hash_changes_with_the_input(tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_text("a")
    first = _record(tmp_path / "o1", {"x": data})["inputs"]["x"]["sha256"]
    assert _record(tmp_path / "o2", {"x": data})["inputs"]["x"]["sha256"] == first
    data.write_text("b")
    assert _record(tmp_path / "o3", {"x": data})["inputs"]["x"]["sha256"] != first


def test_folder_hash_covers_contents_and_names(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"1")
    (folder / "sub" / "b.bin").write_bytes(b"2")
    base = provenance.hash_path(folder)
    assert provenance.hash_path(folder) == base
    (folder / "sub" / "b.bin").write_bytes(b"3")
    changed = provenance.hash_path(folder)
    assert changed != base
    (folder / "sub" / "b.bin").rename(folder / "sub" / "c.bin")
    assert provenance.hash_path(folder) != changed


def _checkpoint(folder: Path) -> Path:
    from mm1.train import checksums

    (folder / "shards").mkdir(parents=True)
    for i in range(3):
        (folder / "shards" / f"{i}.distcp").write_bytes(bytes([i]) * 4096)
    checksums.seal(folder)
    return folder


def _reads(monkeypatch) -> list[Path]:
    """Every file opened through pathlib from now on."""
    opened: list[Path] = []
    real = Path.open

    def spy(self, *args, **kwargs):
        opened.append(Path(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy)
    return opened


def test_a_checkpoint_is_recorded_by_its_manifest_without_reading_its_shards(tmp_path: Path, monkeypatch) -> None:
    from mm1.train import checksums

    assert provenance.MANIFEST == checksums.MANIFEST
    folder = _checkpoint(tmp_path / "ckpt")
    manifest = folder / checksums.MANIFEST
    opened = _reads(monkeypatch)
    first = _record(tmp_path / "o1", {"ckpt": folder})["inputs"]["ckpt"]
    assert first["method"] == "manifest" and first["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert not [p for p in opened if p.suffix == ".distcp"], opened  # no shard was read
    (folder / "shards" / "1.distcp").write_bytes(b"\xff" * 4096)  # a changed shard, resealed
    checksums.seal(folder)
    opened.clear()  # sealing read the shards; provenance must not
    assert provenance.hash_path(folder) != first["sha256"]
    assert opened == [manifest]


def test_large_inputs_are_fingerprinted_by_size_and_mtime(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(provenance, "LARGE_BYTES", 1000)
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(b"x" * 1000)
    small.write_bytes(b"x" * 999)
    opened = _reads(monkeypatch)
    digest, method = provenance.input_digest(big)
    assert method == "stat" and big not in opened
    assert provenance.input_digest(small) == (hashlib.sha256(b"x" * 999).hexdigest(), "sha256")
    os.utime(big, ns=(1, big.stat().st_mtime_ns + 1))  # rewritten (same size, later mtime)
    assert provenance.input_digest(big)[0] != digest
    big.write_bytes(b"x" * 1001)
    assert provenance.input_digest(big)[0] not in (digest, provenance.input_digest(small)[0])


def test_extra_keys_are_recorded(tmp_path: Path) -> None:
    info = _record(tmp_path, extra={"steps_done": 5})
    assert info["steps_done"] == 5
    assert info["inputs"] == {}


def test_missing_input_is_an_error_not_the_hash_of_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        provenance.record(tmp_path / "out", "train", {}, seed=0, inputs={"x": tmp_path / "missing.bin"})
    assert not (tmp_path / "out" / provenance.FILENAME).exists()


# --- atomic writes ------------------------------------------------------------------------------


def test_write_text_leaves_no_temp_files_and_mode_0644(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "file.txt"
    assert atomic.write_text(path, "hello") == path
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]


def test_write_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    atomic.write_bytes(path, b"old")
    atomic.write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_failing_writer_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    atomic.write_text(path, "old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_with(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_failing_writer_creates_nothing(tmp_path: Path) -> None:
    def fail(tmp: Path) -> None:
        raise ValueError("bad data")

    with pytest.raises(ValueError):
        atomic.write_with(tmp_path / "f.txt", fail)
    assert list(tmp_path.iterdir()) == []


def test_temp_files_of_killed_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    """A SIGKILLed writer runs no ``finally``: its temp file stays until the next write of that file,
    which removes it because its process is gone; a live writer's temp file is left alone."""
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = atomic._owner().split("-", 1)[1]
    stale = tmp_path / f".out.txt.{dead.stdout.strip()}-{host}.abc123.tmp"
    live = tmp_path / f".out.txt.{os.getpid()}-{host}.def456.tmp"
    other_host = tmp_path / f".out.txt.{dead.stdout.strip()}-00000000.ghi789.tmp"
    for p in (stale, live, other_host):
        p.write_text("half")
    atomic.write_text(tmp_path / "out.txt", "whole")
    assert (tmp_path / "out.txt").read_text() == "whole"
    assert not stale.exists()
    assert live.exists() and other_host.exists()
