"""The presets are package data: a wheel carries every preset file, and an installed copy finds them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import mm1
from mm1.config.presets import PRESETS_DIR, available

REPO = Path(__file__).resolve().parents[2]
SRC = Path(mm1.__file__).resolve().parent  # src/mm1 of this checkout


def test_the_presets_are_read_from_the_package() -> None:
    assert Path(str(PRESETS_DIR)).resolve() == SRC / "config" / "preset_files"
    assert available() == sorted(p.stem for p in (SRC / "config" / "preset_files").glob("*.yaml"))


def _pip(*args: str, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_wheel_carries_every_preset_and_an_installed_copy_finds_them(tmp_path: Path) -> None:
    # Build from a copy of the project, so the build's own folders (build/, *.egg-info) stay out of the checkout.
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, project / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(SRC, project / "src" / "mm1", ignore=ignore)
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", str(project), "-w", str(wheels), cwd=tmp_path)
    (wheel,) = wheels.glob("mm1-*.whl")

    expected = available()
    assert len(expected) > 20  # the paper's presets, not an empty folder
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("mm1/config/preset_files/")}
    assert shipped == {f"mm1/config/preset_files/{name}.yaml" for name in expected}

    _pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel), cwd=tmp_path)
    probe = (
        "import json, mm1\n"
        "from mm1.config.presets import available, load_preset\n"
        "print(json.dumps({'file': mm1.__file__, 'names': available(), 'resolved': load_preset('mm1-3b').name}))\n"
    )
    outside = tmp_path / "elsewhere"  # a cwd outside the source tree
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=outside, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert Path(found["file"]).resolve().is_relative_to(site.resolve())  # the installed copy, not the checkout
    assert found["names"] == expected
    assert found["resolved"] == "mm1-3b"  # a preset with bases resolves from the installed files
