"""One small world shared by the world tests (built once per session, about a second)."""

from __future__ import annotations

import pytest
from worldkit import SMALL

from mm1.world import World, build_world


@pytest.fixture(scope="session")
def world() -> World:
    return build_world(SMALL)
