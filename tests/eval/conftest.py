"""Fixtures of the eval tests: one tiny world + checkpoint per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from evalkit import make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict[str, Path]:
    return make(tmp_path_factory.mktemp("eval-run"))
