"""DVC end to end on the smoke config: a fresh clone reproduces one figure and exactly the runs Snakemake's
DAG has for it, `dvc push` then `dvc pull` restores every artifact with no recomputation, and in a fresh
clone a config change (regenerated into params/) reruns only the runs whose params it reaches.

One pipeline run (the ancestry of the paper figure with the fewest stages: fig5d, 12) is shared by the tests
of this file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_dvc import dry_run_jobs, dvc_name, resolved_stages, target_rules

from conftest import GIT_ID, copy_project, smoke_config

pytestmark = pytest.mark.slow
# On top of the smoke config: three optimizer steps of two sequences per training stage.
FAST = {"train": {"steps": 3, "warmup_steps": 1, "micro_batch_size": 2, "global_batch_size": 2}}
# ... and for the figure cells (config/study.yaml's ablation scale), at one seed.
FAST_STUDY = {
    "study": {
        "seeds": 1,
        "common": {"train.steps": 3, "train.warmup_steps": 1, "eval.num_examples": 4},
        "stages": {
            "encoder": {
                "train.steps": 3,
                "train.warmup_steps": 1,
                "train.micro_batch_size": 2,
                "train.global_batch_size": 2,
            }
        },
    }
}


def merge(a: dict, b: dict) -> dict:
    return {
        k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v for k, v in {**a, **b}.items()
    }


def sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout + proc.stderr


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def ancestry(stages: dict[str, dict], name: str) -> set[str]:
    """The stage and every stage it depends on, from DVC's resolved deps and outs (a dep may be the
    run folder that holds another stage's outs)."""

    def producers(dep: str) -> set[str]:
        return {s for s, st in stages.items() if any(o == dep or o.startswith(dep + "/") for o in st["outs"])}

    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += [p for d in stages[current]["deps"] for p in producers(d)]
    return seen


def smallest_figure(repo: Path) -> str:
    """The paper figure's stage (named like its Snakemake target, e.g. fig5d) with the fewest stages behind it."""
    stages = resolved_stages(repo)
    paper = yaml.safe_load((repo / "config" / "study.yaml").read_text())["study"]["figures"]
    figures = sorted(stages.keys() & set(target_rules(repo)) & set(paper))
    assert figures, "no paper figure stage in dvc.yaml"
    return min(figures, key=lambda s: (len(ancestry(stages, s)), s))


def snakemake_stages(repo: Path, target: str) -> set[str]:
    """The DVC stages of the jobs in Snakemake's own DAG of ``target``."""
    return {dvc_name(j) for j in dry_run_jobs(repo, [target]) if j["outputs"]}


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """origin (the project on the smoke config, with a local DVC remote) -> a fresh clone that ran
    `dvc repro FIG`, pushed its artifacts and committed dvc.lock."""
    tmp = tmp_path_factory.mktemp("dvc_remote")
    env = {**os.environ, "DVC_SITE_CACHE_DIR": str(tmp / "site-cache"), "DVC_NO_ANALYTICS": "1"}
    origin = copy_project(tmp / "origin")
    config = merge(smoke_config(), FAST)
    (origin / "config" / "default.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    study = merge(yaml.safe_load((origin / "config" / "study.yaml").read_text()), FAST_STUDY)
    (origin / "config" / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))  # read after default.yaml
    sh([sys.executable, "-m", "mm1.dvc_stages", "--write", "dvc.yaml"], origin, env)  # the smoke DAG
    sh(["git", "init", "-q"], origin, env)
    sh(["dvc", "remote", "add", "-d", "storage", str(tmp / "remote")], origin, env)
    sh(["git", "add", "-A"], origin, env)
    sh(["git", *GIT_ID, "commit", "-qm", "smoke"], origin, env)

    clone = tmp / "clone"
    sh(["git", "clone", "-q", str(origin), str(clone)], tmp, env)
    fig = smallest_figure(clone)
    expected = snakemake_stages(clone, fig)
    output = sh(["dvc", "repro", fig], clone, env, timeout=900)
    sh(["dvc", "push", "--with-deps", fig], clone, env)
    sh(["git", "add", "dvc.lock"], clone, env)
    sh(["git", *GIT_ID, "commit", "-qm", "dvc.lock of the smoke run"], clone, env)
    return {"tmp": tmp, "env": env, "clone": clone, "fig": fig, "expected": expected, "output": output}


def test_fresh_clone_repro_runs_exactly_the_figures_ancestry(built: dict):
    clone, fig = built["clone"], built["fig"]
    assert ran(built["output"]) == built["expected"], built["output"][-3000:]
    assert built["expected"] == ancestry(resolved_stages(clone), fig)  # Snakemake's DAG of the target = DVC's
    assert "up to date" in sh(["dvc", "status", "--with-deps", fig], clone, built["env"])


def test_pull_restores_every_artifact_without_recomputation(built: dict):
    clone, env, fig = built["clone"], built["env"], built["fig"]
    before = files_under(clone / "results")
    shutil.rmtree(clone / "results")
    shutil.rmtree(clone / ".dvc" / "cache")
    shutil.rmtree(env["DVC_SITE_CACHE_DIR"])
    sh(["dvc", "pull", "--with-deps", fig], clone, env)
    after = files_under(clone / "results")
    stages = resolved_stages(clone)
    declared = {o for s in ancestry(stages, fig) for o in stages[s]["outs"]}
    assert all((clone / o).exists() for o in declared), sorted(o for o in declared if not (clone / o).exists())
    lost = {f for f in before if f not in after}
    assert all(not any(("results/" + f).startswith(o) for o in declared) for f in lost), sorted(lost)[:10]
    assert {f: after[f] for f in after} == {f: before[f] for f in after}  # the same bytes
    assert "up to date" in sh(["dvc", "status", "--with-deps", fig], clone, env)
    again = sh(["dvc", "repro", fig], clone, env)
    assert not ran(again), again[-3000:]


def test_fresh_clone_after_pull_reruns_only_the_stages_a_config_change_reaches(built: dict):
    env, fig = built["env"], built["fig"]
    fresh = built["tmp"] / "fresh"
    sh(["git", "clone", "-q", str(built["clone"]), str(fresh)], built["tmp"], env)
    sh(["dvc", "pull", "--with-deps", fig], fresh, env)
    config = yaml.safe_load((fresh / "config" / "default.yaml").read_text())
    config["eval"]["captioning"]["max_new_tokens"] = config["eval"]["captioning"]["max_new_tokens"] - 4
    (fresh / "config" / "default.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    sh([sys.executable, "-m", "mm1.dvc_stages", "--write"], fresh, env)  # the documented step after a config edit
    stages = resolved_stages(fresh)
    order = ancestry(stages, fig)

    def reads_eval(name: str) -> bool:
        return any(key.endswith(".eval") for keys in stages[name]["params"].values() for key in keys)

    changed = {s for s in order if reads_eval(s)}
    assert changed, "no stage of the figure reads the eval section"
    downstream = {s for s in order if ancestry(stages, s) & changed}
    output = sh(["dvc", "repro", fig], fresh, env, timeout=600)
    assert changed <= ran(output) <= downstream, (changed, downstream, output[-3000:])
    assert "up to date" in sh(["dvc", "status", "--with-deps", fig], fresh, env)
