"""The Snakemake DAG: lint, the stage graph, and the whole miniature study on the smoke config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from conftest import GIT_ID, SMOKE, run
from mm1.config.presets import deep_merge
from mm1.study import Study


def dag_edges(cwd: Path) -> set[tuple[str, str]]:
    """(upstream rule, downstream rule) pairs from `snakemake --dag` (DOT)."""
    dot = run(["snakemake", "--dag", "--forceall"], cwd).stdout
    labels = re.findall(r'^\s*(\d+)\[label = "([^"]+)"', dot, flags=re.M)
    names = {node: label.split("\\n")[0] for node, label in labels}  # "world\nexp: base" -> world
    return {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.M)}


def test_lint_passes(project: Path):
    out = run(["snakemake", "--lint"], project)
    assert "Lints for" not in out.stdout + out.stderr


def test_dag_runs_every_stage_of_the_paper_pipeline(project: Path):
    edges = dag_edges(project)
    for edge in [
        ("world", "tokenizer"),
        ("world", "pack"),
        ("tokenizer", "pack"),
        ("tokenizer", "llm_pack"),
        ("llm_pack", "llm"),
        ("tokenizer", "encoder"),
        ("llm", "train"),
        ("encoder", "train"),
        ("pack", "train"),
        ("tokenizer", "train"),
        ("train", "eval"),
        ("world", "eval"),
        ("eval", "figure"),
        ("train", "figure"),
        ("figure", "all"),
        ("pack", "all"),
    ]:
        assert edge in edges, f"missing {edge} in {sorted(edges)}"
    dry = run(["snakemake", "-n"], project).stdout
    for rule in ("world", "tokenizer", "llm_pack", "llm", "encoder", "pack", "train", "eval", "figure"):
        assert re.search(rf"^{rule}\s+1$", dry, flags=re.M), dry
    assert not re.search(r"^acquire\s", dry, flags=re.M), "the default config must not acquire anything"
    assert "results/train/base/checkpoint" in dry and "--init-decoder results/llm/base/checkpoint" in dry


def job_counts(dry: str) -> dict[str, int]:
    """rule -> job count from the "Job stats" table of a dry run."""
    table = dry.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M) if m[0] != "total"}


def test_all_figures_plans_one_run_per_distinct_stage_setting(project: Path):
    """The dry run of every figure has exactly the runs mm1.study says each stage needs: every cell
    once per seed, the seeds sharing the LLM and encoder."""
    study = Study(snakemake_config(project))
    counts = job_counts(run(["snakemake", "-n", "all_figures"], project).stdout)
    figures = study.base.study.figures
    cells = {stage: [] for stage in ("eval", "sft_eval", "train")}
    for spec in figures.values():
        n = spec.seeds or study.base.study.seeds
        cells[spec.evaluation] += [r for exp in spec.experiments for r in study.seed_runs(exp, n)]
    n_seeds = study.base.study.seeds
    assert n_seeds == 4
    for stage in ("eval", "sft_eval"):
        assert counts[stage] == len(study.runs(stage, cells[stage])), stage
    assert counts["compare"] == len(figures) >= 11 and counts["lessons"] == counts["power"] == 1
    assert counts["world"] == counts["tokenizer"] == counts["llm_pack"] == 1  # shared by every experiment
    assert counts["encoder"] == 5  # base + Table 1's objective, width and two resolutions
    assert counts["llm"] == 4  # the ablation decoder, two more widths (fig6) and the MoE decoder
    assert counts["train"] == len(study.runs("train", cells["eval"] + cells["sft_eval"] + cells["train"]))
    first_seeds = [c for c in cells["eval"] + cells["sft_eval"] + cells["train"] if not re.search(r"-s\d$", c)]
    # every cell once per seed; a figure with more seeds (the pilot) adds its extra seeds of its cells
    extra = sum(
        (spec.seeds - n_seeds) * len(study.runs("train", spec.experiments))
        for spec in figures.values()
        if spec.seeds and spec.seeds > n_seeds
    )
    assert counts["train"] == n_seeds * len(study.runs("train", first_seeds)) + extra


def test_each_figure_is_a_target_that_builds_only_its_cells(project: Path):
    dry = run(["snakemake", "-n", "fig5d"], project).stdout
    counts = job_counts(dry)
    assert counts["train"] == counts["eval"] == 2 * 4 and counts["compare"] == 1  # 2 cells x 4 seeds
    for exp in ("syn-0", "syn-0-s1", "syn-0-s2", "syn-0-s3", "abl", "abl-s1", "abl-s2", "abl-s3"):
        assert f"results/train/{exp}/checkpoint" in dry, exp
    assert "results/encoder/syn-0" not in dry, "the data ablation must reuse the base encoder"
    assert counts["llm"] == 1 and counts["encoder"] == 1, "the seeds share one LLM and one encoder"
    assert "results/figures/fig5d.png" in dry


def snakemake_config(project: Path) -> dict:
    """config/default.yaml with config/study.yaml merged in, as the Snakefile builds it."""
    base = yaml.safe_load((project / "config/default.yaml").read_text())
    return deep_merge(base, yaml.safe_load((project / "config/study.yaml").read_text()))


def test_experiment_overrides_are_validated_naming_the_experiment(project: Path):
    bad = project / "bad.yaml"
    bad.write_text("study:\n  experiments:\n    wide-conn: {model.connector.kind: cabstractor}\n")
    proc = subprocess.run(["snakemake", "-n", "--configfile", str(bad)], cwd=project, capture_output=True, text=True)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "wide-conn" in out and "model.connector.kind" in out and "c_abstractor" in out


def test_invalid_config_is_refused_before_anything_runs(project: Path):
    bad = project / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    proc = subprocess.run(["snakemake", "-n", "--configfile", str(bad)], cwd=project, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "stepz" in proc.stdout + proc.stderr


def checkpoint_meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "model.json").read_text())


@pytest.mark.slow
def test_smoke_study_end_to_end(project: Path):
    run(["snakemake", "--cores", "2", "--configfile", str(SMOKE)], project, timeout=900)
    results = project / "results"
    assert (results / "train/base/checkpoint/model.json").is_file()
    assert any((results / "train/base/checkpoint").glob("*.distcp")), "no dist_checkpointing shards"
    metrics = pl.read_csv(results / "train/base/metrics.csv")
    assert len(metrics) == 40
    assert metrics["loss"][-5:].mean() < 0.7 * metrics["loss"][:5].mean(), "loss did not go down"
    train_prov = json.loads((results / "train/base/provenance.json").read_text())
    assert train_prov["seed"] == 1234 and train_prov["config"]["train"]["steps"] == 40
    assert {"init_language_model", "init_encoder"} <= set(train_prov["inputs"]), "not started from llm + encoder"
    llm = pl.read_csv(results / "llm/base/metrics.csv")
    assert metrics["loss"][0] < llm["loss"][0], "a pre-trained decoder starts below a random one"
    assert set(pl.read_csv(results / "llm_pack/base/mixture.csv").filter(pl.col("sequences") > 0)["source"]) == {"text"}
    scores = pl.read_csv(results / "eval/base/scores.csv")
    tasks = scores.filter(pl.col("task").is_in(["captioning", "vqa"]) & pl.col("metric").is_in(["CIDEr", "accuracy"]))
    assert tasks.height == 8 * 2  # every benchmark at 0 and 2 shots (smoke.yaml), decoded
    likely = scores.filter(pl.col("metric").is_in(["ll_accuracy", "ref_prob"]))
    assert likely.height == 8 * 2  # ... and scored by likelihood, on every val item (12 images)
    assert likely.filter(pl.col("task") == "captioning")["n_examples"].to_list() == [12] * 6
    assert (tasks["value"] >= 0).all() and (tasks["n_examples"] >= 6).all()
    assert tasks.filter(pl.col("task") == "captioning")["n_examples"].to_list() == [6] * 6
    assert len(list((results / "eval/base/predictions").glob("*shot.json"))) == 16
    assert pl.read_csv(results / "eval/base/summary.csv")["shots"].to_list() == [0, 2]
    png = results / "figures/tiny_study.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    mixture = pl.read_csv(results / "pack/base/mixture.csv")
    assert set(mixture["source"]) == {"caption", "interleaved", "text"} and mixture["sequences"].sum() == 40 * 16
    for stage in ("world", "tokenizer", "pack", "llm", "encoder", "train", "eval"):
        prov = json.loads((results / stage / "base/provenance.json").read_text())
        assert prov["packages"]["megatron-core"] == "0.16.1", stage
        assert "commit" in prov["git"], stage
        assert (project / "logs" / stage / "base.log").is_file()
        assert (project / "benchmarks" / stage / "base.tsv").is_file()
    assert json.loads((results / "figures/tiny_study.provenance.json").read_text())["stage"] == "figure"

    # The SFT half: SFT data, SFT from the pre-trained checkpoint, its 0-shot evaluation.
    run(["snakemake", "sft_base", "--cores", "2", "--configfile", str(SMOKE)], project, timeout=900)
    for stage in ("llm", "encoder", "sft"):
        assert checkpoint_meta(results / stage / "base/checkpoint")["model"]["encoder"]["image_size"] == 32
    assert len(pl.read_csv(results / "sft/base/metrics.csv")) == 10  # study.stages.sft of smoke.yaml
    sft_prov = json.loads((results / "sft/base/provenance.json").read_text())
    assert "init_all" in sft_prov["inputs"], "SFT did not start from the pre-trained checkpoint"
    sft_scores = pl.read_csv(results / "sft_eval/base/scores.csv")
    assert set(sft_scores["shots"]) == {0} and set(sft_scores["mode"]) == {"sft"}
    assert sft_scores.filter(pl.col("benchmark") == "multiple_choice")["n_examples"].item() == 8
    # Nothing left to do: a second run is a no-op.
    again = run(["snakemake", "--cores", "2", "--configfile", str(SMOKE), "-n"], project)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ~9 min alone on 2 cores; beside the other xdist worker it shares them
def test_default_target_and_a_paper_figure_at_full_scale(project: Path):
    """What the README's first command runs (the default target) and one paper figure with all its
    cells at the study's real ablation scale over seeds, then the HTML report of both. The project is
    a git clone, as make study finds it: DVC must know the default target's stages afterwards.
    The figure runs 2 seeds per cell instead of the study's 4 (the suite's time budget): the seed
    runs are made and combined the same way whatever their number."""
    study_file = project / "config/study.yaml"
    text, n = re.subn(r"^  seeds: 4\b", "  seeds: 2", study_file.read_text(), flags=re.M)
    assert n == 1, "config/study.yaml no longer declares `  seeds: 4`"
    study_file.write_text(text)
    run([sys.executable, "-m", "mm1.dvc_stages", "--write"], project)  # dvc.yaml and params/ follow the config
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", *GIT_ID, "commit", "-qm", "clone"]):
        run(cmd, project)
    # One Snakemake for both targets: the figure's one-core jobs fill the cores the default target's
    # chain leaves idle (it builds exactly what `snakemake` and `snakemake fig5d` build one by one).
    run(["snakemake", "all", "fig5d", "--cores", "2"], project, timeout=3000)
    results = project / "results"
    scores = pl.read_csv(results / "figures/tiny_study.csv")
    assert set(scores["shots"]) == {0, 4, 8} and scores["final_train_loss"][0] < 0.5 * scores["first_train_loss"][0]

    # make study's second step: the stages that ran go into dvc.lock, and DVC then sees them as done.
    run([sys.executable, "-m", "mm1.dvc_stages", "--commit"], project)
    stages = set(run(["dvc", "stage", "list", "--name-only"], project).stdout.split())  # foreach runs: train@abl
    locked = set(yaml.safe_load((project / "dvc.lock").read_text())["stages"])
    assert "figure" in locked and {s.split("@")[0] for s in locked} >= {"world", "tokenizer", "pack", "train", "eval"}
    assert locked < set(stages), "only the default target's stages, not the whole study"
    status = run(["dvc", "status", "--with-deps", *sorted(locked)], project)
    assert "up to date" in status.stdout, status.stdout[-2000:]
    repro = run(["dvc", "repro", "--dry", "figure"], project)
    assert "Running stage" not in repro.stdout, repro.stdout[-2000:]

    study = Study(snakemake_config(project))
    fig = pl.read_csv(results / "figures/fig5d.csv")
    assert fig["cell"].unique(maintain_order=True).to_list() == ["syn-0", "abl"]
    assert set(fig["n_seeds"]) == {2} and fig.filter(pl.col("metric") == "8-shot")["ci95"].is_not_null().all()
    seeds = pl.read_csv(results / "figures/fig5d.seeds.csv")
    for cell in ("syn-0", "abl"):
        runs = study.seed_runs(cell, study.base.study.seeds)
        trained = [json.loads((results / "train" / r / "provenance.json").read_text()) for r in runs]
        assert [t["config"]["train"]["seed"] for t in trained] == [1234, 1235]
        ablation_steps = yaml.safe_load(study_file.read_text())["study"]["common"]["train.steps"]
        assert trained[0]["config"]["train"]["steps"] == study.config(cell).train.steps == ablation_steps != 500
        eight = [
            pl.read_csv(results / "eval" / r / "summary.csv").filter(pl.col("shots") == 8)["average"].item()
            for r in runs
        ]
        assert len(set(eight)) > 1, "the seeds gave identical scores"
        per_seed = seeds.filter((pl.col("cell") == cell) & (pl.col("metric") == "8-shot")).sort("seed")["value"]
        assert per_seed.to_list() == pytest.approx(eight)
        row = fig.filter((pl.col("cell") == cell) & (pl.col("metric") == "8-shot"))
        assert row["mean"].item() == pytest.approx(sum(eight) / len(eight))
    assert (results / "figures/fig5d.png").read_bytes()[:4] == b"\x89PNG"

    html = project / "report.html"
    run(["snakemake", "--report", str(html), "all", "fig5d"], project, timeout=600)
    text = html.read_text()
    assert "fig5d" in text and "tiny_study" in text and len(text) > 100_000  # the figures are inlined
