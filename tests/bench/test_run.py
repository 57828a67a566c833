"""The benchmark harness's mechanics (bench/run.py) on fake bench scripts: no benchmark runs here."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
run = sys.modules["bench_run"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up there
_spec.loader.exec_module(run)

GOOD = """
import json, sys
out = sys.argv[sys.argv.index("--out") + 1]
row = dict(name="speed", value=30.0, unit="seq/s", baseline=3.0, ratio=10.0, goal=">= 10x", met=True)
other = dict(name="start-up", value=0.5, unit="s", baseline=None, ratio=None, goal=None, met=None)
json.dump(dict(benchmark="{name}", quick="--quick" in sys.argv, argv=sys.argv[1:], results={{}},
               headline=[row, other]), open(out, "w"))
"""
FAILS = """
import sys
print("half-way", file=sys.stderr)
print("ValueError: boom", file=sys.stderr)
sys.exit(3)
"""
BAD_HEADLINE = """
import json, sys
out = sys.argv[sys.argv.index("--out") + 1]
json.dump(dict(benchmark="x", headline=[dict(name="speed", value="fast", unit="seq/s")]), open(out, "w"))
"""
HANGS = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "60"])
open(sys.argv[sys.argv.index("--out") + 1] + ".pid", "w").write(str(child.pid))
time.sleep(60)
"""


def _bench(tmp: Path, scripts: dict[str, str]) -> Path:
    folder = tmp / "bench"
    folder.mkdir()
    for name, body in scripts.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(body.format(name=name)))
    return folder


def _gone(pid: int, within: float = 5.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_failures_are_recorded_and_the_run_goes_on(tmp_path, capsys):
    bench = _bench(tmp_path, {"loader": GOOD, "generate": FAILS, "workflow": BAD_HEADLINE, "dvc_hash": HANGS})
    results = tmp_path / "results"
    only = ["loader", "generate", "train_throughput", "workflow", "dvc_hash"]
    code = run.main(["--bench-dir", str(bench), "--results", str(results), "--timeout", "3", "--only", *only])
    assert code == 1  # something failed
    summary = json.loads((results / "summary.json").read_text())
    status = {s["name"]: s for s in summary["scripts"]}
    assert [s["name"] for s in summary["scripts"]] == only  # the fixed order, all of them
    assert status["loader"]["status"] == "ok"
    assert status["generate"]["status"] == "failed" and status["generate"]["returncode"] == 3
    assert "ValueError: boom" in status["generate"]["stderr_tail"]
    assert status["train_throughput"]["status"] == "missing" and status["train_throughput"]["command"] is None
    assert status["workflow"]["status"] == "bad-results" and "headline[0]" in status["workflow"]["error"]
    assert status["dvc_hash"]["status"] == "timeout" and 2.5 < status["dvc_hash"]["wall_s"] < 15
    pid = int((results / "dvc_hash.json.pid").read_text())
    assert _gone(pid), "the timed-out script's child process survived"
    # only the good script's rows, tagged with their benchmark
    assert [(r["benchmark"], r["name"]) for r in summary["headline"]] == [("loader", "speed"), ("loader", "start-up")]
    assert summary["command"].startswith("python bench/run.py --bench-dir")
    md = (results / "summary.md").read_text()
    assert "| loader | speed | 30.0 seq/s | 3.00 seq/s | 10.00× | >= 10x | yes |" in md
    assert "| loader | start-up | 0.5 s |  |  |  |  |" in md
    assert "| generate | failed (exit code 3) |" in md and "| train_throughput | missing" in md
    assert summary["command"] in md
    assert "[5/5] dvc_hash ... timeout" in capsys.readouterr().out


def test_quick_and_out_are_passed_and_stale_results_dropped(tmp_path):
    bench = _bench(tmp_path, {"loader": GOOD})
    results = tmp_path / "results"
    results.mkdir()
    (results / "generate.json").write_text("{}")  # not rerun: left alone
    assert run.main(["--bench-dir", str(bench), "--results", str(results), "--quick", "--only", "loader"]) == 0
    out = json.loads((results / "loader.json").read_text())
    assert out["quick"] is True and out["argv"] == ["--quick", "--out", str(results / "loader.json")]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["quick"] is True and [s["status"] for s in summary["scripts"]] == ["ok"]


def test_missing_scripts_alone_do_not_fail_the_run(tmp_path):
    code = run.main(["--bench-dir", str(tmp_path), "--results", str(tmp_path / "r"), "--skip", *run.NAMES[1:]])
    assert code == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["scripts"]] == [("loader", "missing")]
    assert summary["headline"] == []


def test_gpu_script_gets_dry_run_without_cuda(tmp_path, monkeypatch):
    bench = _bench(tmp_path, {"gpu_mfu": GOOD})
    monkeypatch.setattr(run, "_cuda", lambda: False)
    assert run.main(["--bench-dir", str(bench), "--results", str(tmp_path / "r"), "--only", "gpu_mfu"]) == 0
    argv = json.loads((tmp_path / "r" / "gpu_mfu.json").read_text())["argv"]
    assert "--dry-run" in argv


def test_script_order_is_the_issues():
    assert run.NAMES == [
        "loader",
        "generate",
        "train_throughput",
        "scaling",
        "workflow",
        "dvc_hash",
        "checksum_cost",
        "stream_loader",
        "provenance_cost",
        "fetch_images",
        "gpu_mfu",
    ]


def test_headline_rows_are_checked():
    good = [run.row("x", 12.0, "seq/s", 4.0, ">= 10x", False), run.row("y", 1, "s")]
    assert good[0]["ratio"] == 3.0 and good[1]["baseline"] is None and good[1]["ratio"] is None
    assert run.check_headline(good) == []
    assert run.check_headline([]) and run.check_headline(None)
    assert "keys" in run.check_headline([{"name": "x", "value": 1.0}])[0]
    for key, bad in [("value", "12"), ("value", True), ("value", float("nan")), ("met", "yes"), ("unit", None)]:
        errors = run.check_headline([good[0] | {key: bad}])
        assert len(errors) == 1 and f".{key}" in errors[0], (key, bad, errors)


def test_write_refuses_a_bad_headline(tmp_path):
    data = run.report("demo", False, {"a": 1}, [run.row("x", 2.0, "s", 1.0)])
    assert {"benchmark", "created", "quick", "machine", "git", "packages", "results", "headline"} <= set(data)
    run.write(tmp_path / "ok.json", data)
    assert json.loads((tmp_path / "ok.json").read_text())["headline"][0]["ratio"] == 2.0
    with pytest.raises(ValueError, match="bad headline"):
        run.write(tmp_path / "bad.json", data | {"headline": []})
    assert not (tmp_path / "bad.json").exists()
