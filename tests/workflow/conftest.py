"""Fixtures for workflow tests: a private copy of the project to run Snakemake/DVC in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SMOKE = Path(__file__).with_name("smoke.yaml")
GIT_ID = ["-c", "user.name=mm1 tests", "-c", "user.email=tests@mm1.invalid"]  # commits in throw-away repos


def project_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore: what a clean clone would hold; but not an
    untracked dvc.lock (what `make study` recorded of this checkout's own runs)."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    )
    tracked = subprocess.run(["git", "ls-files", "dvc.lock"], cwd=REPO, capture_output=True, text=True).stdout
    files = [line for line in out.stdout.splitlines() if (REPO / line).is_file()]
    return [f for f in files if f != "dvc.lock" or tracked.strip()]


def copy_project(dest: Path) -> Path:
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return dest


def smoke_config() -> dict:
    """config/default.yaml with the smoke overrides merged in (what Snakemake would resolve)."""
    base = yaml.safe_load((REPO / "config" / "default.yaml").read_text())

    def merge(a: dict, b: dict) -> dict:
        return {
            k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
            for k, v in {**a, **b}.items()
        }

    return merge(base, yaml.safe_load(SMOKE.read_text()))


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "mm1")
