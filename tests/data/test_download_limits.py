"""Downloads with limits, against a loopback HTTP server started by the test: a cap per source checked
while streaming, the sha256 computed as the bytes come, If-Range on every resume."""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from mm1.config.data import SourceSpec
from mm1.data import download as download_module
from mm1.data.download import AcquireError, DownloadChecksumError, fetch

V1 = b"".join(b'{"id": "d%d", "text": "first version"}\n' % i for i in range(400))
V2 = b"".join(b'{"id": "d%d", "text": "second version!"}\n' % i for i in range(400))
LAST_MODIFIED = ("Mon, 01 Jan 2024 00:00:00 GMT", "Tue, 02 Jan 2024 00:00:00 GMT")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source(url: str, data: bytes = V1, **limits) -> SourceSpec:
    return SourceSpec(name="corpus", url=url, sha256=sha(data), format="jsonl", role="text", licence="CC0", **limits)


@pytest.fixture(autouse=True)
def _loopback(loopback_downloads):
    """Every test here downloads from its own loopback server (tests/data/conftest.py)."""


@pytest.fixture
def server():
    """``versions[path]``: [(bytes, headers)], the n-th request of a path gets the n-th (or the last);
    ``/endless`` never ends. ``cut_first``: the first response sends half its body;
    ``no_length``: no Content-Length (the body ends when the connection closes). Requests are
    recorded as (path, Range, If-Range)."""
    state = SimpleNamespace(versions={}, requests=[], cut_first=False, no_length=False)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
            seen = sum(1 for p, _, _ in state.requests if p == self.path)
            state.requests.append((self.path, rng, if_range))
            if self.path == "/endless":
                return self._endless()
            data, headers = state.versions[self.path][min(seen, len(state.versions[self.path]) - 1)]
            current = {headers.get("ETag"), headers.get("Last-Modified")}
            start = (
                int(re.fullmatch(r"bytes=(\d+)-", rng)[1]) if rng and (if_range is None or if_range in current) else 0
            )
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            for key, value in headers.items():
                self.send_header(key, value)
            body = data[start:]
            if not state.no_length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if state.cut_first and len(state.requests) == 1 else body)

        def _endless(self):
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except OSError:  # the client hung up
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def files(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("where", ["http", "local"])
def test_a_source_that_never_ends_stops_at_its_cap(tmp_path, server, where):
    url = f"{server.url}/endless" if where == "http" else "/dev/zero"
    cap = 256 << 10
    with pytest.raises(AcquireError) as e:
        fetch(source(url, max_bytes=cap), tmp_path / "corpus")
    assert re.search(rf"source 'corpus': {re.escape(url)} sent more than its cap of {cap} bytes \(max_bytes", str(e))
    assert "stopped and deleted" in str(e.value) and files(tmp_path) == []
    assert len(server.requests) == (1 if where == "http" else 0)  # not retried


def test_a_size_announced_over_the_cap_is_refused_before_anything_is_written(tmp_path, server, monkeypatch):
    server.versions["/c.jsonl"] = [(V1, {})]
    opened = []
    monkeypatch.setattr(download_module, "open", lambda *a, **k: opened.append(a) or open(*a, **k), raising=False)
    with pytest.raises(AcquireError, match=rf"announces {len(V1)} bytes, more than its cap of 1000 bytes"):
        fetch(source(f"{server.url}/c.jsonl", max_bytes=1000), tmp_path / "corpus")
    assert opened == [] and files(tmp_path) == []


def test_declared_bytes_are_the_cap_and_must_match(tmp_path, server):
    server.versions["/c.jsonl"] = [(V1, {})]
    url = f"{server.url}/c.jsonl"
    with pytest.raises(AcquireError, match=rf"announces {len(V1)} bytes, but its entry declares bytes: 100;"):
        fetch(source(url, bytes=100), tmp_path / "a")
    server.no_length = True  # the same file, without Content-Length: stopped at the declared size
    with pytest.raises(AcquireError, match=r"sent more than the 100 bytes its entry declares \(bytes\)"):
        fetch(source(url, bytes=100), tmp_path / "b")
    assert files(tmp_path) == []
    server.cut_first, server.requests = True, []  # ends short of the declared size: resumed
    path = fetch(source(url, bytes=len(V1), max_bytes=1), tmp_path / "c")  # bytes, not max_bytes, is the cap
    assert path.read_bytes() == V1 and [r for _, r, _ in server.requests] == [None, f"bytes={len(V1) // 2}-"]


@pytest.mark.parametrize("validator", ["ETag", "Last-Modified"])
@pytest.mark.parametrize("changed", [False, True])
def test_a_resume_sends_if_range_and_restarts_when_the_file_changed(tmp_path, server, validator, changed):
    """Last-Modified is used when the ETag is weak (W/...), which If-Range cannot send."""

    def headers(i):
        if validator == "ETag":
            return {"ETag": f'"v{i}"'}
        return {"ETag": f'W/"v{i}"', "Last-Modified": LAST_MODIFIED[i]}

    server.versions["/c.jsonl"] = [(V1, headers(0)), (V2 if changed else V1, headers(1 if changed else 0))]
    server.cut_first = True
    path = fetch(source(f"{server.url}/c.jsonl", V2 if changed else V1), tmp_path / "corpus")
    assert path.read_bytes() == (V2 if changed else V1)
    sent = '"v0"' if validator == "ETag" else LAST_MODIFIED[0]
    assert [(r, i) for _, r, i in server.requests] == [(None, None), (f"bytes={len(V1) // 2}-", sent)]
    assert files(tmp_path) == ["c.jsonl"]


@pytest.mark.parametrize("changed", [False, True])
def test_the_next_run_resumes_a_kept_partial_download_only_if_the_file_is_the_same(
    tmp_path, server, monkeypatch, changed
):
    server.versions["/c.jsonl"] = [(V1, {"ETag": '"v0"'})]
    server.cut_first = True
    monkeypatch.setattr(download_module, "RETRY_WAITS_S", ())
    with pytest.raises(AcquireError, match=r"failed 1 times; last: got \d+ of \d+ bytes \(\d+ bytes are kept in"):
        fetch(source(f"{server.url}/c.jsonl"), tmp_path / "corpus")
    assert files(tmp_path) == ["c.jsonl.partial", "c.jsonl.partial.json"]
    if changed:  # the remote file changed between the runs: If-Range gets the whole new file
        server.versions["/c.jsonl"] = [(V2, {"ETag": '"v1"'})]
        with pytest.raises(DownloadChecksumError) as e:
            fetch(source(f"{server.url}/c.jsonl"), tmp_path / "corpus")
        assert f"has sha256 {sha(V2)}, expected {sha(V1)}; the download was deleted" in str(e.value)
        assert files(tmp_path) == []
    else:
        path = fetch(source(f"{server.url}/c.jsonl"), tmp_path / "corpus")
        assert path.read_bytes() == V1 and files(tmp_path) == ["c.jsonl"]
    assert server.requests[1][1:] == (f"bytes={len(V1) // 2}-", '"v0"')


def test_the_hash_is_computed_while_streaming_not_by_reading_the_file_again(tmp_path, server, monkeypatch):
    server.versions["/c.jsonl"] = [(V1, {})]
    server.cut_first = True
    opened = []
    monkeypatch.setattr(
        download_module, "open", lambda f, mode="r", *a: opened.append(mode) or open(f, mode, *a), raising=False
    )
    monkeypatch.setattr(download_module, "sha256_file", lambda path: pytest.fail(f"{path} was read again to hash it"))
    assert fetch(source(f"{server.url}/c.jsonl"), tmp_path / "corpus").read_bytes() == V1
    assert opened == ["ab", "ab"]  # one append per response, never a read


def test_a_hash_mismatch_after_a_resume_without_a_validator_says_so(tmp_path, server):
    server.versions["/c.jsonl"] = [(V1, {}), (V2, {})]  # changed between the two parts, and no way to tell
    server.cut_first = True
    with pytest.raises(DownloadChecksumError) as e:
        fetch(source(f"{server.url}/c.jsonl"), tmp_path / "corpus")
    assert f"expected {sha(V1)}" in str(e.value) and "downloaded in 2 parts" in str(e.value)
    assert "no ETag or Last-Modified" in str(e.value) and files(tmp_path) == []
