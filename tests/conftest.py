"""Fixtures every test folder shares: the tiny world, its tokenizer and the tiny model.

Built once per session under pytest's temp folder, on first use. The configs behind them live in
``tests/tinykit.py`` (plain helpers; tests import those from there, never from a conftest).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mm1.data.tokenizer import TextTokenizer
from tinykit import TINY, WORLD, build_model, tiny, write_world

if TYPE_CHECKING:
    from mm1.models.mm1_model import MM1Model


# A test that makes training exit 75 must not requeue the SLURM job the suite itself may run in
# (mm1.parallel.supervise.requeue_slurm_job); the SLURM requeue test clears it inside its own job.
os.environ.setdefault("MM1_NO_REQUEUE", "1")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny world of :data:`tinykit.WORLD` (``world``, its ``manifest``, the COCO captions
    ``benchmark``), its trained ``tokenizer`` and the ``packed`` sequences of :data:`tinykit.TINY`
    (6 steps of 8; longer runs wrap around). Read it, never write into it."""
    return write_world(tmp_path_factory.mktemp("tiny-world"), WORLD + TINY)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_world: dict[str, Path]) -> TextTokenizer:
    """The tiny world's trained tokenizer."""
    return TextTokenizer(tiny_world["tokenizer"])


@pytest.fixture
def tiny_model(tiny_tokenizer: TextTokenizer) -> Callable[..., MM1Model]:
    """``tiny_model(*overrides)``: a freshly initialised megatron model of :func:`tinykit.tiny` over
    the tiny tokenizer; call it inside ``mm1.parallel.setup.distributed``."""
    return lambda *overrides: build_model(tiny(*overrides), tiny_tokenizer)


# --- running on two cores: pytest-xdist ------------------------------------------------------------
# `make test` runs the suite in two pytest-xdist workers (`-n 2 --dist loadgroup --no-loadscope-reorder`):
# much of it waits on subprocesses (Snakemake, SLURM's polls, torchrun start-up), so a second worker
# fills the idle core. The scheduler below makes each test module one unit of work, so a module's
# fixtures are built once, and puts every SLURM test (tests/slurm/) in one unit, since they share the
# one-node cluster and its 2 CPUs. The collection hook orders the units longest first, so the long
# end-to-end runs start at once and the many short tests fill the other worker around them.
# (xdist_group markers did this until pytest 9: xdist 3.8 still writes the group into `item._nodeid`,
# which pytest 9 no longer reads, so every module was split over both workers and its fixtures built
# twice.)
LONGEST_FIRST = ("tests/workflow/test_snakemake.py", "slurm")
"""Work units by measured length (`--durations`), longest first; then modules with slow tests, then the rest."""


def _unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its module, or "slurm" for every test of tests/slurm/."""
    path = nodeid.split("::")[0]
    return "slurm" if path.startswith("tests/slurm/") else path


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under ``--dist loadgroup``: xdist's load-scope scheduler with :func:`_unit` as the scope."""
    if config.getoption("dist", "no") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return ModuleUnits(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = {_unit(i.nodeid) for i in items if i.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> tuple[int, int]:
        unit = _unit(item.nodeid)
        first = LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST else len(LONGEST_FIRST)
        return first, unit not in slow

    items.sort(key=rank)  # stable: tests keep their order inside a unit


# --- the fault suite's table (issue 10) ------------------------------------------------------------
# tests/faults/conftest.py tags each fault test's reports with its item number; the table is built here,
# in the root conftest, because pytest-xdist's controller (which prints the summary) loads no folder's
# conftest, only the reports the workers send back.
FAULT_ITEMS = {
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
_FAULT_RESULTS: dict[str, dict] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tags = dict(report.user_properties)
    if "faults_item" not in tags or report.when == "teardown" and report.passed:
        return
    entry = _FAULT_RESULTS.setdefault(report.nodeid, {"item": tags["faults_item"], "outcome": "passed", "lost": False})
    if report.failed:
        entry["outcome"] = "failed"
        entry["lost"] |= tags["faults_lost"]
    elif report.skipped:
        entry["outcome"] = "skipped"


def fault_table() -> list[dict]:
    """One row per numbered item of the fault suite: cases tried (not skipped), survived, data lost."""
    rows = []
    for number, name in FAULT_ITEMS.items():
        tried = [r for r in _FAULT_RESULTS.values() if r["item"] == number and r["outcome"] != "skipped"]
        survived, lost = sum(r["outcome"] == "passed" for r in tried), sum(r["lost"] for r in tried)
        rows.append({"item": number, "what": name, "tried": len(tried), "survived": survived, "data_lost": lost})
    return rows


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if not _FAULT_RESULTS or hasattr(config, "workerinput"):  # an xdist worker: the controller writes it
        return
    rows = fault_table()
    out = Path(os.environ.get("MM1_FAULT_REPORT") or config._tmp_path_factory.getbasetemp() / "fault_report.json")
    out.write_text(json.dumps(rows, indent=1) + "\n")
    write = terminalreporter.write_line
    write("")
    write("fault suite (issue 10): item | cases tried | survived | data lost")
    for r in rows:
        write(f"  {r['item']} {r['what']:<40} {r['tried']:>4} {r['survived']:>8} {r['data_lost']:>9}")
    total = {k: sum(r[k] for r in rows) for k in ("tried", "survived", "data_lost")}
    write(f"  = {'all':<40} {total['tried']:>4} {total['survived']:>8} {total['data_lost']:>9}   -> {out}")
