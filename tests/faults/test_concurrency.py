"""Item 9: two workflow runs on one results folder.

- Snakemake: B started while A runs on the same project refuses with the lock message (on the same
  target, and on another target that shares A's upstream outputs), touches nothing, and A completes
  with the reference run's outputs (_workflowkit). A is paused (SIGSTOP) while B starts, so the
  test does not depend on A being slower than B's start-up.
- DVC: two experiments queued with different params (``dvc exp run --queue``) and run by two queue
  workers at once (``dvc queue start --jobs 2``) both succeed, each with the params it was queued
  with and its own output, and the workspace's results are untouched (each runs in its own temp
  workspace under .dvc/tmp/exps).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import _workflowkit
import pytest
import yaml
from _workflowkit import (
    TARGET,
    Launch,
    differences,
    locks,
    temp_files,
)
from faultkit import assert_intact, snapshot, wait_for

reference = _workflowkit.reference  # the session fixture: one reference run for items 3 and 9
pytestmark = [pytest.mark.faults(item=9), pytest.mark.slow]
UPSTREAM = "results/tokenizer/base/tokenizer.json"  # in A's DAG (world -> tokenizer -> pack)


def test_second_snakemake_on_the_same_results_refuses_and_the_first_completes(reference, tmp_path: Path):
    project = reference.fresh(tmp_path / "mm1")
    a = Launch(project, TARGET, name="a")
    try:
        wait_for(lambda: a.running() and locks(project) and (project / "logs").is_dir(), 300, "A's lock and first job")
        a.signal(signal.SIGSTOP)
        try:
            before = snapshot(project / "results") if (project / "results").is_dir() else {}
            bs = {target: Launch(project, target, name=f"b{i}") for i, target in enumerate((TARGET, UPSTREAM))}
            for target, b in bs.items():
                assert b.wait(300) != 0, f"B on {target} ran beside A:\n{b.output()[-2000:]}"
                assert "Directory cannot be locked" in b.output() and "--unlock" in b.output(), b.output()[-2000:]
            assert_intact(project / "results", before, "A's outputs while B was refused")
        finally:
            a.signal(signal.SIGCONT)
        assert a.wait(300) == 0, a.output()[-3000:]
    finally:
        a.kill()
    assert differences(project, reference) == []
    assert temp_files(project / "results") == [] and locks(project) == []


# -- DVC ---------------------------------------------------------------------------------------------
GIT_ID = {k: "mm1-test" for k in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME")} | {
    k: "mm1-test@localhost" for k in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL")
}
VOCABS = (300, 320)  # the smoke config's tokenizer.vocab_size is 400


def sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout + proc.stderr


def queue_workers(project: Path) -> list[int]:
    """PIDs of the live `dvc exp queue-worker` processes of ``project`` (their pid files are kept
    under .dvc/tmp/exps/celery; a worker exits when the queue has been empty for ~10 s)."""
    pids = []
    for pidfile in (project / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.pid"):
        try:
            pid = int(pidfile.read_text())
            if b"queue-worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except (OSError, ValueError):
            continue
    return pids


def experiments(project: Path, env: dict[str, str]) -> list[str]:
    """The refs of the finished experiments (DVC keeps them under refs/exps)."""
    return sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], project, env).split()


def test_two_queued_dvc_experiments_under_two_workers_both_complete(reference, tmp_path: Path):
    project = reference.fresh(tmp_path / "mm1")
    env = {**os.environ, **GIT_ID, "DVC_SITE_CACHE_DIR": str(tmp_path / "site-cache"), "DVC_NO_ANALYTICS": "1"}
    sh([sys.executable, "-m", "mm1.dvc_stages", "--write", "dvc.yaml", "--target", UPSTREAM], project, env)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {"world", "tokenizer"}, stages  # foreach stages: world@base, tokenizer@base
    sh(["git", "init", "-q"], project, env)
    # The world is the reference run's, committed to DVC's cache: the experiments check it out and
    # run the tokenizer only.
    shutil.copytree(reference.done / "results" / "world", project / "results" / "world", symlinks=True)
    sh(["dvc", "commit", "-f", "world@base"], project, env)
    sh(["git", "add", "-A"], project, env)
    sh(["git", "commit", "-qm", "smoke"], project, env)
    workspace = snapshot(project / "results")

    for vocab in VOCABS:
        override = f"params/tokenizer.json:base.tokenizer.vocab_size={vocab}"  # the run's config, as DVC tracks it
        sh(["dvc", "exp", "run", "--queue", "-S", override, "tokenizer@base"], project, env)
    try:
        sh(["dvc", "queue", "start", "--jobs", "2"], project, env)
        started, deadline = time.monotonic(), time.monotonic() + 600
        while len(experiments(project, env)) < len(VOCABS):  # an experiment's ref appears when it succeeds
            if time.monotonic() > deadline or (time.monotonic() > started + 30 and not queue_workers(project)):
                raise AssertionError(sh(["dvc", "queue", "status"], project, env))  # a failure: the workers quit
            time.sleep(1)
        status = sh(["dvc", "queue", "status"], project, env)
        assert status.count("Success") == len(VOCABS), status
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=project, env=env, capture_output=True, timeout=120)
        for pid in queue_workers(project):
            os.kill(pid, signal.SIGKILL)

    shown = json.loads(sh(["dvc", "exp", "show", "--json"], project, env))
    runs = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                vocab = data["params"]["params/tokenizer.json"]["data"]["base"]["tokenizer"]["vocab_size"]
                runs[vocab] = data["outs"]["results/tokenizer/base/tokenizer.json"]["hash"]
    assert sorted(runs) == list(VOCABS), shown
    assert len(set(runs.values())) == len(VOCABS), f"the two experiments' tokenizers are the same file: {runs}"
    assert_intact(project / "results", workspace, "the workspace's results")
