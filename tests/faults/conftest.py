"""The fault-injection suite (issue 10): every test here carries ``@pytest.mark.faults(item=N)``.

After the run, the terminal summary prints one row per numbered item of the suite — cases tried,
survived, data lost — and writes the same table to ``$MM1_FAULT_REPORT`` (default
``fault_report.json`` in pytest's base temp folder). A case counts as "data lost" when it failed with
:class:`faultkit.DataLost`.

Hypothesis runs derandomized (the same examples on every run, so CI is reproducible);
``HYPOTHESIS_PROFILE=dev`` draws fresh random examples instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from faultkit import DataLost
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("dev", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ITEMS = {
    1: "preemption (SIGTERM/SIGUSR1/SIGUSR2, requeue)",
    2: "kill -9 during a checkpoint write",
    3: "Snakemake interrupted mid-DAG",
    4: "corrupt inputs",
    5: "hostile archives, paths and names",
    6: "untrusted checkpoints",
    7: "config fuzz",
    8: "resource exhaustion",
    9: "concurrency (Snakemake, DVC, output lock)",
}
_RESULTS: dict[str, dict] = {}


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent and item.get_closest_marker("faults") is None:
            raise pytest.UsageError(f"{item.nodeid}: every fault test needs @pytest.mark.faults(item=N)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Tag a fault test's reports with its item (and whether it lost data): the tags travel with the
    report, so the table below is built where reports are logged -- in the one process, or in the
    controller when pytest-xdist runs the tests in workers."""
    report = yield
    marker = item.get_closest_marker("faults")
    if marker is not None:
        lost = report.failed and call.excinfo is not None and call.excinfo.errisinstance(DataLost)
        report.user_properties.append(("faults_item", marker.kwargs["item"]))
        report.user_properties.append(("faults_lost", bool(lost)))
    return report


def pytest_runtest_logreport(report):
    tags = dict(report.user_properties)
    if "faults_item" not in tags or report.when == "teardown" and report.passed:
        return
    entry = _RESULTS.setdefault(report.nodeid, {"item": tags["faults_item"], "outcome": "passed", "lost": False})
    if report.failed:
        entry["outcome"] = "failed"
        entry["lost"] |= tags["faults_lost"]
    elif report.skipped:
        entry["outcome"] = "skipped"


def table() -> list[dict]:
    rows = []
    for number, name in ITEMS.items():
        cases = [r for r in _RESULTS.values() if r["item"] == number]
        tried = [r for r in cases if r["outcome"] != "skipped"]
        rows.append(
            {
                "item": number,
                "what": name,
                "tried": len(tried),
                "survived": sum(r["outcome"] == "passed" for r in tried),
                "data_lost": sum(r["lost"] for r in tried),
            }
        )
    return rows


def pytest_terminal_summary(terminalreporter, config):
    if not _RESULTS or hasattr(config, "workerinput"):  # an xdist worker: the controller writes the table
        return
    rows = table()
    out = Path(os.environ.get("MM1_FAULT_REPORT") or config._tmp_path_factory.getbasetemp() / "fault_report.json")
    out.write_text(json.dumps(rows, indent=1) + "\n")
    write = terminalreporter.write_line
    write("")
    write("fault suite (issue 10): item | cases tried | survived | data lost")
    for r in rows:
        write(f"  {r['item']} {r['what']:<40} {r['tried']:>4} {r['survived']:>8} {r['data_lost']:>9}")
    total = {k: sum(r[k] for r in rows) for k in ("tried", "survived", "data_lost")}
    write(f"  = {'all':<40} {total['tried']:>4} {total['survived']:>8} {total['data_lost']:>9}   -> {out}")
