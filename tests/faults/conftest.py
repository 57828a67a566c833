"""The fault-injection suite (issue 10): every test here carries ``@pytest.mark.faults(item=N)``.

Each report of a fault test is tagged with its item and whether it lost data; the root conftest
(``tests/conftest.py``) turns the tags into the suite's table after the run -- cases tried, survived,
data lost per numbered item -- and writes it to ``$MM1_FAULT_REPORT`` (default ``fault_report.json``
in pytest's base temp folder). A case counts as "data lost" when it failed with
:class:`faultkit.DataLost`.

Hypothesis runs derandomized (the same examples on every run, so CI is reproducible);
``HYPOTHESIS_PROFILE=dev`` draws fresh random examples instead.
"""

from __future__ import annotations

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


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent and item.get_closest_marker("faults") is None:
            raise pytest.UsageError(f"{item.nodeid}: every fault test needs @pytest.mark.faults(item=N)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Tag a fault test's reports with its item (and whether it lost data): the tags travel with the
    report, so the table (tests/conftest.py) is built where reports are logged -- in the one process, or in the
    controller when pytest-xdist runs the tests in workers."""
    report = yield
    marker = item.get_closest_marker("faults")
    if marker is not None:
        lost = report.failed and call.excinfo is not None and call.excinfo.errisinstance(DataLost)
        report.user_properties.append(("faults_item", marker.kwargs["item"]))
        report.user_properties.append(("faults_lost", bool(lost)))
    return report
