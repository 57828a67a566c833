"""The paper-scale study plans on SLURM: every figure of config/study-paper.yaml around MM1-30B, each
training job sized by the layout planner (nodes, GPUs, memory, time), each evaluation job given GPUs
for its checkpoint (mm1.plan.infer), each data job memory and time from its data (mm1.plan.data_jobs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import run
from mm1.config.load import from_dict
from mm1.config.presets import deep_merge, preset_data
from mm1.plan import find_gpu, job_resources
from mm1.plan.data_jobs import data_resources
from mm1.plan.infer import (
    HOST_MB_PER_GPU,
    STARTUP_MINUTES,
    checkpoint_stage,
    inference_memory_gb,
    inference_resources,
    plan_inference,
)
from mm1.stages import STAGES
from mm1.study import Study

TRAINING = ("llm", "encoder", "train", "sft")
INFERENCE = tuple(s.name for s in STAGES.values() if s.inference)
SIZED = tuple(s.name for s in STAGES.values() if s.scales_with)
REPO = Path(__file__).resolve().parents[2]


def paper_study(root: Path = REPO) -> Study:
    """config/study-paper.yaml around the mm1-30b preset, as config/paper-30b.yaml resolves it."""
    base = deep_merge(yaml.safe_load((root / "config/default.yaml").read_text()), preset_data("mm1-30b"))
    return Study(deep_merge(base, yaml.safe_load((root / "config/study-paper.yaml").read_text())))


def expected(study: Study, rule: str, exp: str) -> dict:
    """What the rules ask SLURM for an evaluation or data job of ``exp``."""
    if rule in INFERENCE:
        model = study.stage_config(checkpoint_stage(rule), exp)
        return inference_resources(model, study.stage_config(rule, exp).eval, "h100-80gb", rule == "sft_eval")
    s = STAGES[rule]
    return data_resources(s.scales_with, study.stage_config(rule, exp), s.mem_mb, s.runtime, rule == "tokenizer")


def test_every_paper_evaluation_gets_gpus_that_hold_its_checkpoint():
    study, gpu = paper_study(), find_gpu("h100-80gb")
    runs = [(stage, exp) for stage in INFERENCE for exp in study.runs(stage)]
    assert {stage for stage, _ in runs} == {"eval", "sft_eval"} and len(runs) > 10
    for stage, exp in runs:
        want = expected(study, stage, exp)
        model, ev = study.stage_config(checkpoint_stage(stage), exp), study.stage_config(stage, exp).eval
        plan = plan_inference(model, ev, gpu, stage == "sft_eval")
        assert want["tasks"] == plan.tp * plan.dp >= 1 and want["nodes"] == 1, (stage, exp)
        assert plan.memory_gb <= gpu.memory_gb, (stage, exp)
        if plan.tp > 1:  # the smallest TP that fits: half of it would not
            half = inference_memory_gb(model.model, model.tokenizer.vocab_size, plan.tp // 2, ev.micro_batch_size,
                                       ev.max_images)  # fmt: skip
            assert half > gpu.memory_gb, (stage, exp)
        assert want["runtime"] > STARTUP_MINUTES and want["mem_mb"] >= HOST_MB_PER_GPU * want["tasks"]


def test_paper_data_jobs_are_sized_by_their_sequences_and_the_miniature_keeps_its_constants():
    study = paper_study()
    pack = study.stage_config("pack", "base")
    sized = expected(study, "pack", "base")
    assert pack.train.steps * pack.train.global_batch_size > 1e8  # 200k steps x 512
    assert sized["mem_mb"] > STAGES["pack"].mem_mb and sized["runtime"] > 10 * STAGES["pack"].runtime
    half = pack.model_copy(update={"train": pack.train.model_copy(update={"steps": pack.train.steps // 2})})
    assert data_resources("sequences", half, 4000, 30)["mem_mb"] < sized["mem_mb"]
    source = {"url": "https://example.invalid/x", "sha256": "0" * 64, "licence": "CC0-1.0", "bytes": 10**12}
    sources = [source | {"name": "caps", "format": "webdataset", "role": "caption"},
               source | {"name": "web", "format": "jsonl", "role": "text"}]  # fmt: skip
    acquired = from_dict(
        pack.model_dump() | {"data": pack.data.model_dump() | {"source": "acquired", "sources": sources}}
    )
    tok = data_resources("sources", acquired, 2000, 30, tokenizer=True)
    assert tok["runtime"] > 60 * 10 and tok["mem_mb"] > 2e12 * 0.5 / 1e6  # 2 TB of sources: hours, a TB of counts
    assert data_resources("sources", pack, 2000, 30) == {"mem_mb": 2000, "runtime": 30}  # the built-in world
    mini = Study(yaml.safe_load((REPO / "config/default.yaml").read_text()))
    for rule in SIZED:
        for exp in mini.runs(rule)[:1]:
            assert expected(mini, rule, exp) == {"mem_mb": STAGES[rule].mem_mb, "runtime": STAGES[rule].runtime}


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
    study = paper_study(project)
    figures = study.base.study.figures
    assert sum(j["rule"] == "compare" for j in jobs) == len(figures) == 11
    checked, planned, evaluated = 0, {}, 0
    for job in jobs:
        got = job["resources"]
        if job["rule"] in (*INFERENCE, *SIZED):
            want = expected(study, job["rule"], job["exp"])
            assert int(got["mem_mb"]) == want["mem_mb"] and int(got["runtime"]) == want["runtime"], job
            if job["rule"] in INFERENCE:  # evaluation runs on GPUs, one task per GPU
                assert int(got["tasks"]) == want["tasks"] >= 1 and "gpu" not in got, job
                assert got["slurm_extra"] == f"--ntasks-per-node={want['tasks']} --gpus-per-node={want['tasks']}", job
                assert int(got["nodes"]) == 1 and int(got["cpus_per_task"]) == want["cpus_per_task"], job
                evaluated += 1
            continue
        if job["rule"] not in TRAINING:
            assert "gpu" not in got and "slurm_extra" not in got, job  # figure jobs take no GPU
            continue
        resolved = json.loads(study.stage_json(job["rule"], job["exp"]))
        del resolved["name"]
        key = json.dumps(resolved, sort_keys=True)
        if key not in planned:
            planned[key] = job_resources(from_dict(resolved), "h100-80gb")
        want = planned[key]
        assert int(got["nodes"]) == want["nodes"] and int(got["tasks"]) == want["tasks"] and "gpu" not in got, job
        per_node = f"--ntasks-per-node={want['tasks_per_node']} --gpus-per-node={want['gpus_per_node']}"
        assert got["slurm_extra"] == per_node, job  # every node its GPUs, one task each
        assert int(got["mem_mb"]) == want["mem_mb"] and int(got["runtime"]) == want["runtime"], job
        assert int(got["cpus_per_task"]) == want["cpus_per_task"], job
        checked += 1
    train = [j for j in jobs if j["rule"] == "train" and j["exp"] == "base"]
    assert train and train[0]["resources"]["nodes"] == "64" and train[0]["resources"]["tasks"] == "512"
    assert train[0]["resources"]["slurm_extra"] == "--ntasks-per-node=8 --gpus-per-node=8"
    stats = out.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    counts = {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", stats, flags=re.M)}
    assert checked == sum(counts[s] for s in TRAINING) > 50
    assert evaluated == sum(counts.get(s, 0) for s in INFERENCE) > 10
