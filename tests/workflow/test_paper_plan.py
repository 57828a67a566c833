"""The paper-scale study plans on SLURM: every figure of config/study-paper.yaml around MM1-30B, each
training job sized by the layout planner (nodes, GPUs, memory, time)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import run
from mm1.config.load import from_dict
from mm1.config.presets import deep_merge, preset_data
from mm1.plan import job_resources
from mm1.study import Study

TRAINING = ("llm", "encoder", "train", "sft")


def dry_run_jobs(out: str) -> list[dict]:
    """(rule, exp, resources) of every job in a `snakemake -n` listing."""
    jobs = []
    for block in re.split(r"\n(?=rule \w+:)", out):
        head = re.match(r"rule (\w+):", block)
        exp = re.search(r"^    wildcards: exp=(\S+)$", block, flags=re.M)
        res = re.search(r"^    resources: (.*)$", block, flags=re.M)
        if head and res:
            pairs = dict(kv.split("=", 1) for kv in res.group(1).split(", "))
            jobs.append({"rule": head.group(1), "exp": exp.group(1) if exp else None, "resources": pairs})
    return jobs


@pytest.mark.slow
def test_the_30b_study_plans_every_figure_with_the_planners_resources(project: Path):
    out = run(
        [
            "snakemake",
            "-n",
            "all_figures",
            "--workflow-profile",
            "profiles/slurm",
            "--configfile",
            "config/paper-30b.yaml",
        ],
        project,
    ).stdout
    jobs = dry_run_jobs(out)
    base = deep_merge(yaml.safe_load((project / "config/default.yaml").read_text()), preset_data("mm1-30b"))
    study = Study(deep_merge(base, yaml.safe_load((project / "config/study-paper.yaml").read_text())))
    figures = study.base.study.figures
    assert sum(j["rule"] == "compare" for j in jobs) == len(figures) == 11
    checked, planned = 0, {}
    for job in jobs:
        if job["rule"] not in TRAINING:
            assert "gpu" not in job["resources"], job  # data, eval and figure jobs take no GPU
            continue
        resolved = json.loads(study.stage_json(job["rule"], job["exp"]))
        del resolved["name"]
        key = json.dumps(resolved, sort_keys=True)
        if key not in planned:
            planned[key] = job_resources(from_dict(resolved), "h100-80gb")
        want = planned[key]
        got = job["resources"]
        assert int(got["nodes"]) == want["nodes"] and int(got["gpu"]) == int(got["tasks"]) == want["tasks"], job
        assert int(got["mem_mb"]) == want["mem_mb"] and int(got["runtime"]) == want["runtime"], job
        assert int(got["cpus_per_task"]) == want["cpus_per_task"], job
        checked += 1
    train = [j for j in jobs if j["rule"] == "train" and j["exp"] == "base"]
    assert train and train[0]["resources"]["nodes"] == "64" and train[0]["resources"]["gpu"] == "512"
    stats = out.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    counts = {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", stats, flags=re.M)}
    assert checked == sum(counts[s] for s in TRAINING) > 50
