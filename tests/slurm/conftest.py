"""The SLURM tests run against a real cluster: the local one-node cluster of ``scripts/slurm-local``.

Without it they fail (start it, as root: ``scripts/slurm-local install && scripts/slurm-local start``);
``MM1_NO_SLURM=1`` skips them instead, for machines where it cannot run (no root).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

START = "scripts/slurm-local install && scripts/slurm-local start"


def _answers(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


@pytest.fixture(scope="session", autouse=True)
def slurm_cluster() -> str:
    """The cluster's partitions (``sinfo``); fails when no cluster answers, or sacct does not."""
    if os.environ.get("MM1_NO_SLURM") == "1":
        pytest.skip("MM1_NO_SLURM=1: no local SLURM cluster on this machine (it needs root)")
    howto = f"start it as root with `{START}` (or set MM1_NO_SLURM=1 to skip the SLURM tests)"
    if shutil.which("sinfo") is None:
        pytest.fail(f"SLURM is not installed: {howto}", pytrace=False)
    partitions = _answers(["sinfo", "-h", "-o", "%P %a %T"])
    if not partitions:
        pytest.fail(f"no SLURM cluster answers `sinfo`: {howto}", pytrace=False)
    if _answers(["sacct", "-n", "-X", "-S", "now"]) is None:
        pytest.fail(f"`sacct` does not answer (slurmdbd down?): {howto}", pytrace=False)
    return partitions
