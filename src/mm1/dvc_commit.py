"""Record in DVC what Snakemake just built: the stages of a target's jobs go into dvc.lock.

The study runs through Snakemake (``make study``), so DVC has seen none of it: ``dvc status`` calls
every stage changed and ``dvc repro`` would redo the study. ``dvc commit`` records a stage's deps,
params and outs as they are now, which is right only for outputs that are up to date; so this first
asks Snakemake (what its dry run of the same targets and config asks) that nothing is left to do, then commits
exactly the stages of the target's jobs, matched to dvc.yaml by their outputs.

    python -m mm1.dvc_stages --commit                 # after `snakemake` (make study does both)
    python -m mm1.dvc_stages --commit --target fig5d  # after `snakemake fig5d`
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from mm1.dvc_stages import Invocation, read_dag

DVC_YAML = "dvc.yaml"


def _outs(stage: dict) -> frozenset[str]:
    entries = [e for section in ("outs", "metrics", "plots") for e in stage.get(section, [])]
    return frozenset(next(iter(e)) if isinstance(e, dict) else e for e in entries)


def stages_for(root: Path, how: Invocation) -> list[str]:
    """The dvc.yaml stages of the jobs Snakemake runs for ``how``'s targets, in DAG order; an error
    while Snakemake still has work to do for them (their outputs are not the ones to record)."""
    dag = read_dag(root, how, with_pending=True)
    if dag.pending:
        target = " ".join(how.targets) or "the default target"
        again = " ".join(["snakemake", "--cores", "all", *how.args(), *how.targets])
        raise SystemExit(
            f"Snakemake has {len(dag.pending)} job(s) left for {target} (first: {dag.pending[0]}): "
            f"run `{again}` first, then commit"
        )
    stages = yaml.safe_load((root / DVC_YAML).read_text()).get("stages", {})
    by_outs = {_outs(stage): name for name, stage in stages.items()}
    names, unknown = [], []
    for job in dag.jobs:
        name = by_outs.get(frozenset(job.outputs))
        (names if name else unknown).append(name or f"{job.rule} {dict(job.wildcards)}")
    if unknown:
        regen = " ".join(["python -m mm1.dvc_stages --write dvc.yaml", *how.args()])
        raise SystemExit(
            f"{DVC_YAML} has no stage for {len(unknown)} job(s) of this study (first: {unknown[0]}): "
            f"it was generated for another study or config; regenerate it with `{regen}`"
        )
    return names


def _in_git_clone(root: Path) -> bool:
    if shutil.which("git") is None:
        return False
    probe = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=root, capture_output=True, text=True)
    return probe.returncode == 0 and probe.stdout.strip() == "true"


def commit(root: Path, how: Invocation) -> int:
    root = Path(root).resolve()
    if not (root / ".dvc").is_dir() or not _in_git_clone(root):
        print(f"{root} is not a git clone with DVC (.dvc/): nothing recorded (DVC versions a git repository)")
        return 0
    names = stages_for(root, how)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "commit", "--force", "--quiet", *names], cwd=root, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"dvc commit failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")
    target = " ".join(how.targets) or "the default target"
    print(f"recorded {len(names)} DVC stage(s) of {target} in dvc.lock: `dvc status` is clean for them")
    return 0
