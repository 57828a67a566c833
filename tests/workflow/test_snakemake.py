"""The Snakemake DAG: lint, the stage graph, and the whole miniature study on the smoke config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from conftest import SMOKE, run


def dag_edges(cwd: Path) -> set[tuple[str, str]]:
    """(upstream rule, downstream rule) pairs from `snakemake --dag` (DOT)."""
    dot = run(["snakemake", "--dag", "--forceall"], cwd).stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', dot, flags=re.M))
    return {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.M)}


def test_lint_passes(project: Path):
    out = run(["snakemake", "--lint"], project)
    assert "Lints for" not in out.stdout + out.stderr


def test_dag_runs_world_tokenizer_pack_train_eval_figure(project: Path):
    edges = dag_edges(project)
    for edge in [
        ("world", "tokenizer"),
        ("world", "pack"),
        ("tokenizer", "pack"),
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
    for rule in ("world", "tokenizer", "pack", "train", "eval", "figure"):
        assert re.search(rf"^{rule}\s+1$", dry, flags=re.M), dry
    assert not re.search(r"^acquire\s", dry, flags=re.M), "the default config must not acquire anything"


def test_invalid_config_is_refused_before_anything_runs(project: Path):
    bad = project / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    proc = __import__("subprocess").run(
        ["snakemake", "-n", "--configfile", str(bad)], cwd=project, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "stepz" in proc.stdout + proc.stderr


@pytest.mark.slow
def checkpoint_meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "model.json").read_text())


def test_smoke_study_end_to_end(project: Path):
    run(["snakemake", "--cores", "2", "--configfile", str(SMOKE)], project, timeout=900)
    results = project / "results"
    assert (results / "train/checkpoint/model.json").is_file()
    assert any((results / "train/checkpoint").glob("*.distcp")), "no dist_checkpointing shards"
    metrics = pl.read_csv(results / "train/metrics.csv")
    assert len(metrics) == 40
    assert metrics["loss"][-5:].mean() < 0.7 * metrics["loss"][:5].mean(), "loss did not go down"
    scores = pl.read_csv(results / "eval/scores.csv")
    tasks = scores.filter(pl.col("task").is_in(["captioning", "vqa"]))
    assert tasks.height == 8 * 2  # every benchmark at 0 and 2 shots (smoke.yaml)
    assert (tasks["value"] >= 0).all() and (tasks["n_examples"] >= 6).all()
    assert tasks.filter(pl.col("task") == "captioning")["n_examples"].to_list() == [6] * 6
    assert len(list((results / "eval/predictions").glob("*shot.json"))) == 16
    assert pl.read_csv(results / "eval/summary.csv")["shots"].to_list() == [0, 2]
    png = results / "figures/tiny_study.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    mixture = pl.read_csv(results / "packed/mixture.csv")
    assert set(mixture["source"]) == {"caption", "interleaved", "text"} and mixture["sequences"].sum() == 40 * 16
    for stage in ("world", "tokenizer", "packed", "train", "eval", "figures"):
        prov = json.loads((results / stage / "provenance.json").read_text())
        assert prov["packages"]["megatron-core"] == "0.16.1", stage
        assert "commit" in prov["git"], stage
    train_prov = json.loads((results / "train/provenance.json").read_text())
    assert train_prov["seed"] == 1234 and train_prov["config"]["train"]["steps"] == 40
    for rule in ("world", "tokenizer", "pack", "train", "eval", "figure"):
        assert (project / "logs" / f"{rule}.log").is_file()
        assert (project / "benchmarks" / f"{rule}.tsv").is_file()
    # The other training stages: encoder pre-training, SFT data, SFT from the pre-trained checkpoint.
    run(["snakemake", "stages", "--cores", "2", "--configfile", str(SMOKE)], project, timeout=900)
    assert set(pl.read_csv(results / "llm_packed/mixture.csv").filter(pl.col("sequences") > 0)["source"]) == {"text"}
    for stage in ("llm", "encoder", "sft"):
        assert checkpoint_meta(results / stage / "checkpoint")["model"]["encoder"]["image_size"] == 32
        assert len(pl.read_csv(results / stage / "metrics.csv")) == 40, stage
    sft_prov = json.loads((results / "sft/provenance.json").read_text())
    assert "init_all" in sft_prov["inputs"], "SFT did not start from the pre-trained checkpoint"
    sft_scores = pl.read_csv(results / "sft_eval/scores.csv")
    assert set(sft_scores["shots"]) == {0} and set(sft_scores["mode"]) == {"sft"}
    assert sft_scores.filter(pl.col("benchmark") == "multiple_choice")["n_examples"].item() == 8
    # Nothing left to do: a second run is a no-op.
    again = run(["snakemake", "--cores", "2", "--configfile", str(SMOKE), "-n"], project)
    assert "Nothing to be done" in again.stdout + again.stderr
