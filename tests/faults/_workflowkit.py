"""The Snakemake project that the workflow fault tests (items 3 and 9) run in, and its reference run.

The target is ``results/pack/base/train.parquet``: world -> tokenizer -> pack, three stages and no
training, about 8 s of jobs on the smoke config. :func:`reference` runs it once, uninterrupted, and
keeps a digest of every file under results/; an interrupted or contended run must end with the same
digests.

Two things differ from run to run and are left out of the digests (checked: two clean runs differ
in these fields only): the ``fetched_at`` column of the world's manifest.parquet, and the
``created``/``host`` fields of provenance.json together with the manifest's sha256 that a
provenance file records as an input. logs/ and benchmarks/ are not compared.

Tests import from here (``from _workflowkit import ...``). The ``reference`` fixture is session
scoped, but pytest makes one fixture per module that imports it, so the run itself is cached here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import yaml
from faultkit import sha256

from tinykit import TESTS, load_conftest

TARGET = "results/pack/base/train.parquet"
STAGES = ("world", "tokenizer", "pack")  # TARGET's DAG, in order
VARIABLE = {"manifest.parquet": ["fetched_at"]}  # per-run columns of a parquet output
_workflow = load_conftest(TESTS / "workflow")  # copy_project, smoke_config
_CACHE: dict[str, Reference] = {}


@dataclass(frozen=True)
class Reference:
    template: Path  # a clean project copy on the smoke config: copy it, never run in it
    done: Path  # the copy that ran TARGET uninterrupted
    digests: dict[str, str]  # results/... -> digest (see digest())

    def fresh(self, dest: Path) -> Path:
        return Path(shutil.copytree(self.template, dest, symlinks=True))


def prepare(dest: Path) -> Path:
    """A copy of the project with the smoke config as config/default.yaml: plain ``snakemake`` and
    the generated dvc.yaml's stage commands (which pass no --configfile) both run it."""
    project = _workflow.copy_project(dest)
    (project / "config" / "default.yaml").write_text(yaml.safe_dump(_workflow.smoke_config(), sort_keys=False))
    return project


def snakemake(*args: str) -> list[str]:
    return ["snakemake", *args, "--cores", "2"]


def finish(project: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``snakemake ARGS`` to the end; with ``check``, fail with its output unless it exits 0."""
    proc = subprocess.run(snakemake(*args), cwd=project, capture_output=True, text=True, timeout=timeout)
    proc.output = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.output[-4000:]}")
    return proc


class Launch:
    """``snakemake ARGS`` in the background, in a process group of its own (so a signal reaches
    Snakemake and its jobs, as Ctrl-C or a scheduler's kill would), its output in a file."""

    def __init__(self, project: Path, *args: str, name: str = "snakemake"):
        self.log = project.parent / f"{project.name}.{name}.out"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                snakemake(*args), cwd=project, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def signal(self, signum: int) -> None:
        os.killpg(self.proc.pid, signum)

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"snakemake did not exit within {timeout:.0f} s:\n{self.output()[-3000:]}") from None

    def kill(self) -> None:
        """Best effort: the whole group, for a test's cleanup."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"snakemake ended ({self.proc.returncode}) too early:\n{self.output()[-3000:]}")
        return True


def writing(project: Path, stage: str, launch: Launch) -> Callable[[], list[Path]]:
    """For faultkit.wait_for: what shows that ``stage`` is in the middle of writing its outputs:
    mm1.atomic's temp files (``.NAME.*.tmp``) under its folder, or else (should a fast write slip
    between two polls) files there before its provenance.json, which a stage writes last."""
    folder = project / "results" / stage / "base"

    def partial() -> list[Path]:
        launch.running()
        temps = temp_files(folder)
        if temps or not folder.is_dir() or (folder / "provenance.json").exists():
            return temps
        return sorted(p for p in folder.rglob("*") if p.is_file())

    return partial


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp")) if folder.is_dir() else []


def locks(project: Path) -> list[str]:
    return sorted(p.name for p in (project / ".snakemake" / "locks").glob("*"))


def incomplete(project: Path) -> list[str]:
    return sorted(p.name for p in (project / ".snakemake" / "incomplete").glob("*"))


def digest(path: Path) -> str:
    """sha256 of the file, minus what differs between two clean runs (module docstring)."""
    if path.name in VARIABLE:
        frame = pl.read_parquet(path).drop(VARIABLE[path.name])
        return hashlib.sha256(frame.write_csv().encode()).hexdigest()
    if path.name == "provenance.json":
        info = json.loads(path.read_text())
        for key in ("created", "host"):
            info.pop(key)
        for entry in info.get("inputs", {}).values():
            if Path(entry["path"]).name in VARIABLE:
                entry.pop("sha256")
        return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
    return sha256(path)


def digests(project: Path) -> dict[str, str]:
    """sha256 of every output under results/; the output locks beside them (``.<out>.lock``, which
    name the last holder: pid, host, time) are no outputs and are left out."""
    results = project / "results"
    return {
        str(p.relative_to(project)): digest(p)
        for p in sorted(results.rglob("*"))
        if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".lock"))  # mm1.outlock.lock_path
    }


def differences(project: Path, reference: Reference) -> list[str]:
    """What differs from the reference run's results: [] when every output is the same."""
    got, want = digests(project), reference.digests
    return sorted(
        [f"extra: {k}" for k in got.keys() - want.keys()]
        + [f"missing: {k}" for k in want.keys() - got.keys()]
        + [f"changed: {k}" for k in got.keys() & want.keys() if got[k] != want[k]]
    )


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """One uninterrupted run of TARGET and the digests of its outputs (shared by items 3 and 9)."""
    if "reference" not in _CACHE:
        root = tmp_path_factory.mktemp("workflow")
        template = prepare(root / "template")
        done = Path(shutil.copytree(template, root / "reference", symlinks=True))
        finish(done, TARGET)
        assert temp_files(done / "results") == [], "a clean run left temp files"
        _CACHE["reference"] = Reference(template, done, digests(done))
    return _CACHE["reference"]
