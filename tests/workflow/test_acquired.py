"""data.source=acquired: the same DAG reads real-format datasets downloaded from URLs.

The datasets here are a small synthetic world, served by a loopback HTTP server the test starts;
the pipeline sees only URLs, hashes and formats, as it would for real data.
"""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from pathlib import Path

import polars as pl
import pytest
import yaml

from conftest import SMOKE, run
from mm1.config import load
from mm1.world.export import make_world

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path: Path):
    """A small world written as datasets, served over http://127.0.0.1:<port>/."""
    root = tmp_path / "served"
    overrides = yaml.safe_load(SMOKE.read_text())["world"]
    cfg = load(None, [f"world.{k}={v}" for k, v in overrides.items()] + ["world.seed=7"])
    manifest = make_world(cfg.world, root)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", manifest
    server.shutdown()


def test_snakemake_packs_acquired_datasets(project: Path, served):
    base_url, manifest = served
    pretraining = manifest.filter(pl.col("role").is_in(["caption", "interleaved", "text"]))
    sources = [
        {
            "name": f"{row['name']}-{i}",
            "url": f"{base_url}/{row['path']}",
            "sha256": row["sha256"],
            "format": row["format"],
            "role": row["role"],
            "licence": "CC0-1.0",
        }
        for i, row in enumerate(pretraining.iter_rows(named=True))
    ]
    acquired = project / "acquired.yaml"
    acquired.write_text(yaml.safe_dump({"data": {"source": "acquired", "sources": sources}}))
    configs = ["--configfile", str(SMOKE), str(acquired)]
    dry = run(["snakemake", "-n", "results/pack/base/mixture.csv", *configs], project).stdout
    assert "acquire" in dry and "rule world" not in dry
    run(["snakemake", "--cores", "2", "results/pack/base/mixture.csv", *configs], project, timeout=900)
    got = pl.read_parquet(project / "results/acquire/base/manifest.parquet")
    record = json.loads((project / "results/acquire/base/provenance.json").read_text())
    assert record["stage"] == "acquire" and record["files_sha256"] == dict(zip(got["path"], got["sha256"], strict=True))
    assert [s["url"] for s in record["config"]["data"]["sources"]] == [s["url"] for s in sources]
    assert got.height == len(sources)
    assert got["sha256"].to_list() == [s["sha256"] for s in sources]
    assert got["samples"].to_list() == pretraining["samples"].to_list()
    assert got["bad_samples"].sum() == 0
    mixture = pl.read_csv(project / "results/pack/base/mixture.csv")
    assert set(mixture["source"]) == {"caption", "interleaved", "text"}
    assert mixture["sequences"].sum() == 40 * 16


def test_a_wrong_hash_stops_the_pipeline_naming_the_source(project: Path, served):
    base_url, manifest = served
    row = manifest.filter(pl.col("role") == "text").row(0, named=True)
    source = {
        "name": "corpus",
        "url": f"{base_url}/{row['path']}",
        "sha256": "0" * 64,
        "format": "jsonl",
        "role": "text",
        "licence": "CC0-1.0",
    }
    acquired = project / "acquired.yaml"
    acquired.write_text(yaml.safe_dump({"data": {"source": "acquired", "sources": [source]}}))
    proc = subprocess.run(
        [
            "snakemake",
            "--cores",
            "1",
            "results/acquire/base/manifest.parquet",
            "--configfile",
            str(SMOKE),
            str(acquired),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    log = (project / "logs/acquire/base.log").read_text()
    assert "corpus" in log and "sha256" in log and "Traceback" not in log
    assert not (project / "results/acquire/base/manifest.parquet").exists()
