"""scripts/test-env: `make test` runs what the machine can run and names, in one line, what it skips."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("bash", "env", "id", "git", "dirname", "sed", "timeout", "cat", "false")  # none of java/node/npm/sinfo


def _bare_machine(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the script and a PATH with a shell and git but no java, node, npm or SLURM."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    shutil.copy2(REPO / "scripts" / "test-env", scripts / "test-env")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    for path in (tmp_path, scripts, bin_dir):
        path.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    return scripts / "test-env", env


def _summary(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("test-env:")]


def test_without_root_java_node_or_slurm_each_is_skipped_and_named_in_one_line():
    with tempfile.TemporaryDirectory(prefix="mm1-test-env-") as tmp:  # pytest's tmp_path is root's only
        _run_as_nobody(Path(tmp))


def _run_as_nobody(tmp_path: Path) -> None:
    script, env = _bare_machine(tmp_path)
    as_user = []
    if os.geteuid() == 0:  # as nobody
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.fail("setpriv (util-linux) is needed to run the script as an unprivileged user", pytrace=False)
        as_user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    proc = subprocess.run([*as_user, str(script), "run", "env"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    before, after = _summary(proc.stdout)  # the same line before and after the tests
    assert before == after and before.startswith("test-env: skipping SLURM"), before
    for words in ("run make test as root", "java", "nodejs npm", "full-disk faults"):
        assert words in before, (words, before)
    exported = dict(line.split("=", 1) for line in proc.stdout.splitlines() if line.startswith("MM1_NO_"))
    assert exported == {"MM1_NO_SLURM": "1", "MM1_NO_JAVA": "1", "MM1_NO_NPM": "1", "MM1_NO_ROOT": "1"}


def test_the_tests_exit_status_is_the_scripts_and_a_set_skip_is_honoured(tmp_path: Path):
    script, env = _bare_machine(tmp_path)
    env["MM1_NO_SLURM"] = "1"  # never starts the local cluster, even as root
    proc = subprocess.run([str(script), "run", "false"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    (line, _) = _summary(proc.stdout)
    assert "SLURM (MM1_NO_SLURM=1 was set)" in line
    assert ("full-disk faults" in line) == (os.geteuid() != 0)
    usage = subprocess.run([str(script), "run"], env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage" in usage.stdout
