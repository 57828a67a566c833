"""Item 6: loading a checkpoint never unpickles code; a pickled callable anywhere in it is refused.

megatron's loader unpickles three pieces of a checkpoint with no restriction (``.metadata``, bytes
items, and ``common.pt`` when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``) and mm1 itself read its RNG files
with ``weights_only=False``. Each test here plants a :class:`Payload` -- a pickled callable that makes a
marker folder when unpickled -- in one of those places of a real checkpoint, loads it through mm1's
real load paths and asserts :class:`~mm1.train.safe_load.UnsafeCheckpointError` naming the file and
the global, no marker, and the checkpoint still there. The controls show each payload is live: with
the check switched off, megatron's loader runs it.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import random
import shutil
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from faultkit import ROOT, assert_intact, snapshot

from mm1.config import ParallelConfig
from mm1.data.tokenizer import TextTokenizer
from mm1.models.size import optimizer_hparams
from mm1.parallel.setup import distributed
from mm1.train import checkpoint, checksums, safe_load, state
from mm1.train.optim import build_optimizer, wrap_ddp
from mm1.train.safe_load import UnsafeCheckpointError
from mm1.train.trainer import _facts, build, train
from tinykit import build_model, tiny

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import tensor_parallel
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

pytestmark = pytest.mark.faults(item=6)

SETS = ("train.steps=2", "train.save_interval=2", "parallel.distributed_optimizer=true")
STEP = "step_000002"
MKDIR = f"{os.mkdir.__module__}.{os.mkdir.__name__}"  # the global a Payload pickles: posix.mkdir


class Payload:
    """Unpickling this creates the folder ``marker``: the proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def run(tiny_world, tmp_path_factory) -> Path:
    """A finished tiny run (distributed optimizer): ``checkpoint/`` and ``resume/step_000002``."""
    out = tmp_path_factory.mktemp("untrusted") / "run"
    train(tiny(*SETS), tiny_world["packed"], tiny_world["tokenizer"], out)
    return out


# --- planting a payload -----------------------------------------------------------------------------


def _dump_metadata(ckpt: Path, metadata) -> None:
    with (ckpt / ".metadata").open("wb") as f:
        pickle.dump(metadata, f)


def plant_metadata(ckpt: Path, marker: Path) -> Path:
    metadata = safe_load.read_metadata(ckpt / ".metadata")
    metadata.planner_data = Payload(marker)
    _dump_metadata(ckpt, metadata)
    return ckpt / ".metadata"


def plant_common_pt(ckpt: Path, marker: Path) -> Path:
    common = torch.load(ckpt / "common.pt", weights_only=True)
    torch.save({**common, "payload": Payload(marker)}, ckpt / "common.pt")
    return ckpt / "common.pt"


def plant_bytes_item(ckpt: Path, marker: Path) -> Path:
    """Point the first bytes item (a megatron ShardedObject: an ``_extra_state``) at a pickled payload
    appended to its data file, as a crafted checkpoint would."""
    metadata = safe_load.read_metadata(ckpt / ".metadata")
    fqn = next(k for k, m in metadata.state_dict_metadata.items() if isinstance(m, BytesStorageMetadata))
    index = next(i for i in metadata.storage_data if i.fqn == fqn)
    info = metadata.storage_data[index]
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    data = ckpt / info.relative_path
    info.offset, info.length = data.stat().st_size, len(buffer.getvalue())
    with data.open("ab") as f:
        f.write(buffer.getvalue())
    _dump_metadata(ckpt, metadata)
    return data


def plant_rng(ckpt: Path, marker: Path) -> Path:
    rng = ckpt / state.RNG / "rank_00000.pt"
    torch.save({**torch.load(rng, weights_only=True), "numpy": Payload(marker)}, rng)
    return rng


PLANT: dict[str, Callable[[Path, Path], Path]] = {
    "metadata": plant_metadata,
    "common_pt": plant_common_pt,
    "bytes_item": plant_bytes_item,
    "rng": plant_rng,
}


def planted(src: Path, dst: Path, place: str) -> tuple[Path, Path]:
    """A copy of checkpoint ``src`` at ``dst`` with a payload in ``place``: (the file, the marker).

    The copy's checksums are recorded again after the planting: a crafted checkpoint carries a manifest
    that matches it (a checksum is no signature), so the unpickling checks must refuse it on their own."""
    shutil.copytree(src, dst)
    marker = dst.parent / f"marker-{place}"
    file = PLANT[place](dst, marker)
    checksums.seal(dst)
    return file, marker


def refused(excinfo, file: Path) -> None:
    message = str(excinfo.value)
    assert str(file) in message and MKDIR in message, message
    assert excinfo.value.refused == (MKDIR,)


# --- refused, through every load path ---------------------------------------------------------------


@pytest.mark.parametrize("place", ["metadata", "common_pt", "bytes_item"])
def test_pickled_callable_in_a_model_checkpoint_is_refused_by_load_into(run, tiny_world, tmp_path, place):
    file, marker = planted(run / "checkpoint", tmp_path / "checkpoint", place)
    before = snapshot(tmp_path / "checkpoint")
    cfg, tok = tiny(*SETS), TextTokenizer(tiny_world["tokenizer"])
    with distributed(ParallelConfig(), seed=0), pytest.raises(UnsafeCheckpointError) as excinfo:
        checkpoint.load_into(build_model(cfg, tok), tmp_path / "checkpoint")
    refused(excinfo, file)
    assert not marker.exists(), "loading the checkpoint ran the pickled callable"
    assert_intact(tmp_path / "checkpoint", before)


@pytest.mark.parametrize("place", ["metadata", "common_pt", "bytes_item", "rng"])
def test_pickled_callable_in_a_resumable_checkpoint_is_refused_by_train_resume(run, tiny_world, tmp_path, place):
    out = tmp_path / "run"
    file, marker = planted(run / "resume" / STEP, out / "resume" / STEP, place)
    before = snapshot(out / "resume")
    with pytest.raises(UnsafeCheckpointError) as excinfo:
        train(tiny(*SETS, "train.steps=4"), tiny_world["packed"], tiny_world["tokenizer"], out)
    refused(excinfo, file)
    assert not marker.exists(), "resuming ran the pickled callable"
    assert_intact(out / "resume", before)  # refused, neither moved aside nor cleared for a fresh start


def test_state_load_refuses_each_planted_place_itself(run, tiny_world, tmp_path):
    """``state.load`` checks too (not only ``resumable``, which picks the checkpoint)."""
    cfg, tok = tiny(*SETS), TextTokenizer(tiny_world["tokenizer"])
    copies = {place: planted(run / "resume" / STEP, tmp_path / place / STEP, place) for place in PLANT}
    with distributed(cfg.parallel, cfg.train.seed) as rank:
        model = wrap_ddp(build(cfg, tok), cfg.parallel)
        optimizer, scheduler = build_optimizer(model, cfg.train, *optimizer_hparams(cfg, vocab_size=tok.vocab_size))
        facts = _facts(cfg, rank, {"packed": tiny_world["packed"], "tokenizer": tiny_world["tokenizer"]})
        for place, (file, marker) in copies.items():
            with pytest.raises(UnsafeCheckpointError) as excinfo:
                state.load(tmp_path / place / STEP, model.module, optimizer, scheduler, facts)
            refused(excinfo, file)
            assert not marker.exists(), f"state.load ran the callable planted in {place}"


def test_link_out_of_the_folder_and_item_outside_it_are_refused(run, tmp_path):
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(run / "checkpoint", ckpt)
    (tmp_path / "elsewhere.pt").write_bytes((ckpt / "common.pt").read_bytes())
    (ckpt / "common.pt").unlink()
    (ckpt / "common.pt").symlink_to(tmp_path / "elsewhere.pt")
    with pytest.raises(UnsafeCheckpointError, match="a link out of the checkpoint folder"):
        safe_load.verify(ckpt)
    (ckpt / "common.pt").unlink()
    shutil.copy(tmp_path / "elsewhere.pt", ckpt / "common.pt")
    metadata = safe_load.read_metadata(ckpt / ".metadata")
    next(iter(metadata.storage_data.values())).relative_path = "../elsewhere.pt"
    _dump_metadata(ckpt, metadata)
    checksums.seal(ckpt)
    with pytest.raises(UnsafeCheckpointError, match=r"stored at '../elsewhere.pt', outside the checkpoint folder"):
        safe_load.verify(ckpt)


# Like the CLI's ``distributed()``, the worker tears the process group down after an error before it
# exits: a gloo group still alive at interpreter exit can abort (SIGABRT) when its peer has gone.
WORKER = """
import sys, torch
from mm1.parallel.setup import shutdown
from mm1.train import safe_load
torch.distributed.init_process_group("gloo")
try:
    safe_load.verify_on_every_rank(sys.argv[1])
except safe_load.UnsafeCheckpointError as exc:
    print("refused:", exc.file, flush=True)
    shutdown(clean=False)
    sys.exit(3)
"""


@pytest.mark.multiprocess
def test_a_payload_in_one_ranks_rng_file_stops_every_rank(run, tmp_path):
    """Each rank reads only its own RNG file; when rank 1's is refused, rank 0 raises too instead of
    going on to the load's collectives and waiting there for a rank that has gone."""
    ckpt = tmp_path / STEP
    shutil.copytree(run / "resume" / STEP, ckpt)
    rng = ckpt / state.RNG
    shutil.copy(rng / "rank_00000.pt", rng / "rank_00001.pt")
    torch.save(Payload(tmp_path / "marker"), rng / "rank_00001.pt")
    checksums.seal(ckpt)
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
    assert f"refused: {rng / 'rank_00001.pt'}" in outs[1] and f"refused: {ckpt}" in outs[0], outs
    assert not (tmp_path / "marker").exists()


# --- the payloads are live: without the check, megatron's loader runs them ---------------------------


@pytest.mark.parametrize("place", ["metadata", "common_pt", "bytes_item"])
def test_control_without_the_check_megatrons_loader_runs_the_payload(run, tiny_world, tmp_path, monkeypatch, place):
    if place == "common_pt":  # megatron's torch.load() of common.pt is weights-only unless this is set
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    _, marker = planted(run / "checkpoint", tmp_path / "checkpoint", place)
    cfg, tok = tiny(*SETS), TextTokenizer(tiny_world["tokenizer"])
    with distributed(ParallelConfig(), seed=0):
        model = build_model(cfg, tok)
        with pytest.raises(UnsafeCheckpointError):  # the environment variable does not weaken the check
            checkpoint.load_into(model, tmp_path / "checkpoint")
        assert not marker.exists()
        monkeypatch.setattr(safe_load, "verify", lambda *args, **kwargs: None)
        try:
            checkpoint.load_into(model, tmp_path / "checkpoint")
        except (Exception, CheckpointException):  # what megatron makes of the rest does not matter here
            pass
    assert marker.is_dir(), f"the payload in {place} was not run: this test would prove nothing"


# --- every checkpoint mm1 writes passes ---------------------------------------------------------------


def test_verify_accepts_every_checkpoint_mm1_writes(run, tiny_world, tmp_path):
    """The model checkpoint, the resumable one (distributed optimizer; the plain optimizer's are
    loaded by tests/train/test_resume.py through the same check) and an MoE model's."""
    cfg, tok = tiny(*SETS), TextTokenizer(tiny_world["tokenizer"])
    moe = tiny(*SETS, "model.moe.num_experts=4", "model.moe.layer_freq=1", "model.moe.top_k=2")
    with distributed(ParallelConfig(), seed=0):
        meta = {"model": moe.model.model_dump(mode="json"), "vocab_size": tok.vocab_size}
        checkpoint.save(build_model(moe, tok), meta, tmp_path / "moe")
        for ckpt, model_cfg in [(run / "checkpoint", cfg), (tmp_path / "moe", moe)]:
            safe_load.verify(ckpt)
            model = build_model(model_cfg, tok)
            checkpoint.load_into(model, ckpt)
    safe_load.verify(run / "resume" / STEP)
    assert torch.load(run / "resume" / STEP / state.RNG / "rank_00000.pt", weights_only=True)["format"] == 2
    with pytest.raises(UnsafeCheckpointError, match=rf"extra\.pt: .*{MKDIR}"):  # any *.pt in the folder
        torch.save(Payload(tmp_path / "marker"), tmp_path / "moe" / "extra.pt")
        checksums.seal(tmp_path / "moe")
        safe_load.verify(tmp_path / "moe")
    assert not (tmp_path / "marker").exists()


# --- RNG states: weights-only, bit for bit --------------------------------------------------------------


def draws() -> tuple:
    tracker = tensor_parallel.get_cuda_rng_tracker()
    with tracker.fork():
        tracked = torch.rand(4)
    return torch.rand(4), tracked, np.random.rand(4), np.random.standard_normal(), random.random(), random.gauss(0, 1)


def test_rng_state_loads_weights_only_and_round_trips_bit_for_bit(tmp_path):
    with distributed(ParallelConfig(), seed=3):
        np.random.standard_normal()  # a cached second normal deviate: numpy's has_gauss/gauss
        random.gauss(0, 1)  # and python's gauss_next
        torch.save(state._rng_state(), tmp_path / "rank_00000.pt")
        expected = draws()
        draws()
        state._set_rng_state(torch.load(tmp_path / "rank_00000.pt", weights_only=True))
        got = draws()
    for e, g in zip(expected, got, strict=True):
        assert np.array_equal(np.asarray(e), np.asarray(g)), (e, g)


def test_rng_file_of_the_old_format_restarts_from_the_seed_without_unpickling_it(tmp_path):
    old = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    (tmp_path / state.RNG).mkdir()
    torch.save(old, tmp_path / state.RNG / "rank_00000.pt")
    checksums.seal(tmp_path)
    safe_load.verify(tmp_path)  # numpy's legacy ndarray: let through, never unpickled
    with pytest.warns(UserWarning, match="older format"):
        assert state._read_rng(tmp_path / state.RNG / "rank_00000.pt") is None
    torch.save({**old, "payload": Payload(tmp_path / "marker")}, tmp_path / state.RNG / "rank_00000.pt")
    checksums.seal(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=MKDIR):  # but nothing else
        safe_load.verify(tmp_path)
    assert not (tmp_path / "marker").exists()


# --- statically: no unsafe deserialisation anywhere in src/mm1 -------------------------------------------

UNSAFE_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("marshal", "load"),
    ("marshal", "loads"),
    ("shelve", "open"),
    ("dill", "load"),
    ("dill", "loads"),
    ("joblib", "load"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
}
VERIFY_ALL = ("safe_load", "verify_on_every_rank")
DIST_LOADS = {"load", "load_tensors_metadata", "load_plain_tensors", "load_common_state_dict", "load_sharded_metadata"}


def _dotted(node: ast.AST) -> tuple[str, str] | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.value.id, node.attr
    return None


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_deserialisation(source: str, where: str) -> list[str]:
    """Every place in ``source`` that could unpickle untrusted data, as "where:line: what"."""
    tree, found = ast.parse(source), []
    allowed_unpickler = where.endswith("mm1/train/safe_load.py")  # its restricted _MetadataUnpickler
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in {"pickle", "marshal", "dill", "torch", "yaml"}:
            found += [
                f"{where}:{node.lineno}: from {node.module} import {a.name}" for a in node.names if "load" in a.name
            ]
        if isinstance(node, ast.Attribute) and _dotted(node) in UNSAFE_CALLS:
            if not (allowed_unpickler and _dotted(node) == ("pickle", "Unpickler")):
                found.append(f"{where}:{node.lineno}: {'.'.join(_dotted(node))}")
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id in {"eval", "exec", "__import__"}:
            found.append(f"{where}:{node.lineno}: {node.func.id}()")
        name = _dotted(node.func)
        weights_only = _kw(node, "weights_only")
        if name == ("torch", "load") and not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            found.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
        allow_pickle = _kw(node, "allow_pickle")
        if name in {("np", "load"), ("numpy", "load")} and not (
            allow_pickle is None or isinstance(allow_pickle, ast.Constant) and allow_pickle.value is False
        ):
            found.append(f"{where}:{node.lineno}: np.load with allow_pickle")
    return found


def unverified_loads(source: str, where: str) -> list[str]:
    """Calls of megatron's dist_checkpointing loaders not preceded by ``safe_load.verify`` in their function."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call)]
        verified = [n.lineno for n in calls if _dotted(n.func) in {("safe_load", "verify"), VERIFY_ALL}]
        for n in calls:
            if _dotted(n.func) in {("dist_checkpointing", f) for f in DIST_LOADS}:
                if not any(line < n.lineno for line in verified):
                    found.append(f"{where}:{n.lineno}: dist_checkpointing.{n.func.attr} without safe_load.verify first")
    return found


BAD = """
import pickle, yaml, numpy as np, torch
from torch import load
class U(pickle.Unpickler): pass
def f(p, data):
    torch.load(p)
    torch.load(p, weights_only=False)
    pickle.loads(data)
    yaml.load(data)
    np.load(p, allow_pickle=True)
    eval(data)
    exec(data)
def g(p):
    dist_checkpointing.load({}, p)
"""


def test_src_never_deserialises_unsafely():
    bad = unsafe_deserialisation(BAD, "bad.py") + unverified_loads(BAD, "bad.py")
    assert len(bad) == 10, bad  # the checker finds each kind it looks for
    problems = []
    for path in sorted((ROOT / "src" / "mm1").rglob("*.py")):
        source, where = path.read_text(), str(path.relative_to(ROOT))
        problems += unsafe_deserialisation(source, where) + unverified_loads(source, where)
    assert not problems, "unsafe deserialisation in src/mm1:\n  " + "\n  ".join(problems)
