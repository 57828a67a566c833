"""Fixtures shared by the data tests."""

from __future__ import annotations

import io
import tarfile

import pytest


@pytest.fixture
def raw_tar():
    """raw_tar(path, [(name, bytes | TarInfo), ...]) -> path: a tar with exactly these members, unchecked
    (how hostile or broken archives are made)."""

    def make(path, members):
        with tarfile.open(path, "w") as tar:
            for name, data in members:
                if isinstance(data, tarfile.TarInfo):
                    tar.addfile(data)
                else:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return path

    return make


@pytest.fixture
def loopback_downloads(monkeypatch):
    """Downloads from a test's loopback server: no proxy for 127.0.0.1, no waits between retries."""
    from mm1.data import download

    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.setattr(download, "RETRY_WAITS_S", (0.0, 0.0, 0.0))
