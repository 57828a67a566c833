"""dvc.yaml describes the same graph as the Snakemake rules, and `dvc repro` reproduces the figure."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run, smoke_config


def snakemake_jobs(cwd: Path) -> dict[str, dict]:
    """rule -> {"inputs", "outputs", "shell"} parsed from `snakemake -n -p --forceall all stages`."""
    out = run(["snakemake", "-n", "-p", "--forceall", "all", "stages"], cwd).stdout
    jobs: dict[str, dict] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head:
            continue
        field = dict(re.findall(r"^    (input|output): (.*)$", block, flags=re.M))
        shell = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        jobs[head.group(1)] = {
            "inputs": set(field.get("input", "").split(", ")) - {""},
            "outputs": set(field.get("output", "").split(", ")) - {""},
            "shell": shell.group(1) if shell else "",
        }
    return jobs


def dvc_io() -> dict[str, tuple[set[str], set[str]]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    io_ = {}
    for name, stage in stages.items():
        outs = set()
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                outs.add(entry if isinstance(entry, str) else next(iter(entry)))
        io_[name] = (set(stage.get("deps", [])), outs)
    return io_


def test_dvc_stages_match_snakemake_rules():
    jobs, dvc = snakemake_jobs(REPO), dvc_io()
    for target in ("all", "stages"):  # target rules, not stages
        jobs.pop(target, None)
    assert set(jobs) == set(dvc)
    for stage, (deps, outs) in dvc.items():
        assert deps == jobs[stage]["inputs"], f"{stage}: dvc deps {deps} != snakemake inputs {jobs[stage]['inputs']}"
        assert outs == jobs[stage]["outputs"], f"{stage}: dvc outs {outs} != snakemake outputs {jobs[stage]['outputs']}"


def test_dvc_params_are_the_config_keys_each_rule_passes():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    jobs = snakemake_jobs(REPO)
    for name, stage in stages.items():
        sections = {s for entry in stage.get("params", []) for s in entry["config/default.yaml"]}
        found = re.search(r"--config-json '([^']*)'", jobs[name]["shell"])
        passed = set(json.loads(found.group(1))) if found else set()
        assert sections == passed, f"{name}: dvc params {sections} vs snakemake --config-json keys {passed}"


@pytest.mark.slow
def test_dvc_repro_in_a_fresh_repo_reruns_exactly_what_changed(project: Path):
    (project / "config/default.yaml").write_text(yaml.safe_dump(smoke_config(), sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"]):
        run(cmd, project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke"], project)
    first = run(["dvc", "repro", "figure"], project, timeout=900).stdout
    assert (project / "results/figures/tiny_study.png").is_file()
    for stage in ("world", "tokenizer", "pack", "train", "eval", "figure"):
        assert f"Running stage '{stage}'" in first, first
    assert "up to date" in run(["dvc", "status", "figure"], project).stdout  # (the other stages never ran)
    # Change only the eval section: eval reruns (the figure too if the scores changed), nothing upstream.
    cfg = yaml.safe_load((project / "config/default.yaml").read_text())
    cfg["eval"]["captioning"]["max_new_tokens"] = 8
    (project / "config/default.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    second = run(["dvc", "repro", "figure"], project, timeout=600).stdout
    assert "Running stage 'eval'" in second, second
    for stage in ("world", "tokenizer", "pack", "train"):
        assert f"Running stage '{stage}'" not in second, second
    metrics = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=project, capture_output=True, text=True)
    shown = json.loads(metrics.stdout)
    assert "coco" in json.dumps(shown) and '"average"' in json.dumps(shown), metrics.stdout
