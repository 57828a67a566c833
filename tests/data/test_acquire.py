"""Acquisition against a loopback HTTP server started by the test (no other network)."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import polars as pl
import pytest
from PIL import Image

from mm1.config import ConfigError, from_dict
from mm1.config.data import SourceSpec
from mm1.data import acquire as acquire_module
from mm1.data.acquire import AcquireError, acquire
from mm1.data.download import DownloadChecksumError
from mm1.data.formats import (
    FormatError,
    UnsafeArchiveError,
    write_caption_shards,
    write_coco_captions,
    write_documents,
    write_text,
)
from mm1.data.quarantine import Quarantine, QuarantineError
from mm1.data.records import CaptionBenchmark, CaptionSample, InterleavedDoc, TextDoc


def png(i: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (i * 40 % 256, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spec(name, url, path, fmt="webdataset", role="caption", sha=None) -> SourceSpec:
    return SourceSpec(name=name, url=url, sha256=sha or sha256(path), format=fmt, role=role, licence="CC-BY-4.0")


def caption_shard(folder, n=4, prefix="captions"):
    samples = [
        CaptionSample(f"{i:04d}", png(i), {"alt": f"ball {i}", "synthetic": f"A red ball {i}."}) for i in range(n)
    ]
    [path] = write_caption_shards(samples, folder, shard_size=n, prefix=prefix)
    return path


def symlink(name, target):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.fixture(autouse=True)
def _loopback(loopback_downloads):
    """Every test here downloads from its own loopback server (tests/data/conftest.py)."""


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/served over HTTP on 127.0.0.1; records (path, Range header) per request.
    ``cut_first``: the first response sends half its body and closes; ``ignore_range``: always 200."""
    state = SimpleNamespace(root=tmp_path / "served", requests=[], cut_first=False, ignore_range=False)
    state.root.mkdir()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            path = state.root / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            data, start = path.read_bytes(), 0
            if rng and not state.ignore_range:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1])
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.cut_first and len(state.requests) == 1:
                body = body[: len(body) // 2]
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_acquire_three_sources_and_manifest(tmp_path, server):
    shard = caption_shard(server.root)
    docs = write_documents(
        [InterleavedDoc("d0", ("hi", None), (None, png(1))), InterleavedDoc("d1", ("only text",), (None,))],
        server.root / "docs.parquet",
    )
    text = write_text([TextDoc(f"t{i}", f"text {i}") for i in range(3)], server.root / "text.jsonl")
    specs = [
        spec("caps", f"{server.url}/{shard.name}", shard),
        spec("docs", f"{server.url}/docs.parquet", docs, "obelics", "interleaved"),
        spec("text", f"{server.url}/text.jsonl", text, "jsonl", "text"),
    ]
    out = tmp_path / "acquired"
    df = acquire(specs, out, max_bad_fraction=0.0)
    assert df.columns == list(acquire_module.MANIFEST_SCHEMA)
    assert df["samples"].to_list() == [4, 2, 3] and df["bad_samples"].to_list() == [0, 0, 0]
    assert df["path"].to_list() == ["caps/captions-000000.tar", "docs/docs.parquet", "text/text.jsonl"]
    assert df["sha256"].to_list() == [s.sha256 for s in specs]
    assert df["bytes"].to_list() == [p.stat().st_size for p in (shard, docs, text)]
    assert df["licence"].to_list() == ["CC-BY-4.0"] * 3 and df["role"].to_list() == ["caption", "interleaved", "text"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", t) for t in df["fetched_at"])
    assert pl.read_parquet(out / "manifest.parquet").equals(df)
    assert pl.read_parquet(out / "quarantine.parquet").columns == ["source", "file", "key", "reason"]
    for row in df.iter_rows(named=True):
        assert sha256(out / row["path"]) == row["sha256"]
    assert not list(out.rglob("*.partial"))
    requests = len(server.requests)
    acquire(specs, out, max_bad_fraction=0.0)  # present with the right hash: not downloaded again
    assert len(server.requests) == requests


def test_interrupted_download_resumes_with_range(tmp_path, server):
    shard = caption_shard(server.root, n=20)
    server.cut_first = True
    df = acquire([spec("caps", f"{server.url}/{shard.name}", shard)], tmp_path / "out", 0.0)
    assert df["samples"].to_list() == [20]
    half = shard.stat().st_size // 2
    assert [r for _, r in server.requests] == [None, f"bytes={half}-"]
    assert (tmp_path / "out" / "caps" / shard.name).read_bytes() == shard.read_bytes()


def test_server_that_ignores_range_restarts(tmp_path, server):
    shard = caption_shard(server.root, n=20)
    server.cut_first = server.ignore_range = True
    acquire([spec("caps", f"{server.url}/{shard.name}", shard)], tmp_path / "out", 0.0)
    assert [r for _, r in server.requests] == [None, f"bytes={shard.stat().st_size // 2}-"]
    assert (tmp_path / "out" / "caps" / shard.name).read_bytes() == shard.read_bytes()


def test_bad_hash_is_an_error_and_leaves_no_file(tmp_path, server):
    shard = caption_shard(server.root)
    wrong = "0" * 64
    with pytest.raises(DownloadChecksumError) as e:
        acquire([spec("caps", f"{server.url}/{shard.name}", shard, sha=wrong)], tmp_path / "out", 0.0)
    assert "'caps'" in str(e.value) and wrong in str(e.value) and sha256(shard) in str(e.value)
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == [tmp_path / "out" / "quarantine.parquet"]


def test_http_error_names_the_source(tmp_path, server):
    with pytest.raises(AcquireError, match="'gone'.*404"):
        acquire([spec("gone", f"{server.url}/missing.tar", None, sha="1" * 64)], tmp_path / "out", 0.0)


def outside_files(tmp_path, out):
    return sorted(p for p in tmp_path.rglob("*") if out not in p.parents and p != out)


@pytest.mark.parametrize(
    "member",
    [
        ("../evil.txt", b"x"),
        ("../../evil.txt", b"x"),
        ("/tmp/mm1-evil.txt", b"x"),
        ("k.txt", symlink("k.txt", "/etc/passwd")),
    ],
    ids=["dotdot", "dotdot2", "absolute", "symlink"],
)
@pytest.mark.parametrize("fmt", ["webdataset", "coco"])
def test_malicious_tar_is_refused(tmp_path, server, member, fmt, raw_tar):
    """Read in place (webdataset) or extracted (a coco archive): refused either way, nothing outside out_dir."""
    path = raw_tar(server.root / "evil.tar", [("k.png", png()), ("k.txt", b"caption"), member])
    out = tmp_path / "a" / "out"
    out.parent.mkdir()
    before = outside_files(tmp_path, out)
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(member[0]))):
        acquire(
            [spec("evil", f"{server.url}/evil.tar", path, fmt, "caption" if fmt == "webdataset" else "benchmark")],
            out,
            1.0,
        )
    assert outside_files(tmp_path, out) == before
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "a" / "evil.txt").exists()
    assert not [p for p in out.rglob("*") if "extract" in p.name]


def test_truncated_tar_is_an_error_naming_the_file(tmp_path, server):
    shard = caption_shard(server.root, n=6)
    shard.write_bytes(shard.read_bytes().rstrip(b"\0")[:3000])
    with pytest.raises(FormatError, match=f"{shard.name}.*truncated"):
        acquire([spec("caps", f"{server.url}/{shard.name}", shard)], tmp_path / "out", 1.0)


def bad_shard(raw_tar, folder):
    return raw_tar(
        folder / "mixed.tar",
        [m for i in range(8) for m in ((f"{i:02d}.png", png(i)), (f"{i:02d}.txt", f"caption {i}".encode()))]
        + [("08.png", b"\x89PNG garbage"), ("08.txt", b"ok"), ("09.png", png()), ("09.txt", b"caf\xe9")],
    )


def test_bad_samples_are_quarantined_with_file_key_reason(tmp_path, server, raw_tar):
    path = bad_shard(raw_tar, server.root)
    out = tmp_path / "out"
    df = acquire([spec("mixed", f"{server.url}/mixed.tar", path)], out, max_bad_fraction=0.25)
    assert df["samples"].to_list() == [8] and df["bad_samples"].to_list() == [2]
    q = pl.read_parquet(out / "quarantine.parquet")
    assert q["source"].to_list() == ["mixed", "mixed"] and q["key"].to_list() == ["08", "09"]
    assert q["file"].to_list() == [str(out / "mixed" / "mixed.tar")] * 2
    assert "cannot be decoded" in q["reason"][0] and "09.txt is not UTF-8" in q["reason"][1]


def test_too_many_bad_samples_is_an_error(tmp_path, server, raw_tar):
    path = bad_shard(raw_tar, server.root)
    out = tmp_path / "out"
    with pytest.raises(QuarantineError, match=r"'mixed': 2 of 10 samples rejected") as e:
        acquire([spec("mixed", f"{server.url}/mixed.tar", path)], out, max_bad_fraction=0.1)
    assert "[08]" in str(e.value) and "cannot be decoded" in str(e.value)
    assert len(pl.read_parquet(out / "quarantine.parquet")) == 2
    assert not (out / "manifest.parquet").exists()


def test_empty_source_is_an_error(tmp_path, server):
    path = write_text([], server.root / "empty.jsonl")
    with pytest.raises(AcquireError, match="'empty'"):
        acquire([spec("empty", f"{server.url}/empty.jsonl", path, "jsonl", "text")], tmp_path / "out", 0.0)


def test_file_url_and_local_path(tmp_path):
    shard = caption_shard(tmp_path / "src")
    text = write_text([TextDoc("t", "x")], tmp_path / "src" / "t.jsonl")
    specs = [spec("a", shard.as_uri(), shard), spec("b", str(text), text, "jsonl", "text")]
    df = acquire(specs, tmp_path / "out", 0.0)
    assert df["samples"].to_list() == [4, 1]
    assert (tmp_path / "out" / "a" / shard.name).read_bytes() == shard.read_bytes()


def test_benchmark_archive_is_extracted_and_read_with_images(tmp_path, server):
    bench = CaptionBenchmark("c", "val", {1: png(1), 2: png(2)}, {1: ["a", "b"], 2: ["c"]})
    write_coco_captions(bench, tmp_path / "coco")
    (tmp_path / "coco" / "images" / "val" / "000000000002.png").write_bytes(b"junk")
    with tarfile.open(server.root / "coco.tar", "w") as tar:
        tar.add(tmp_path / "coco", arcname="coco")
    specs = [
        spec("coco", f"{server.url}/coco.tar", server.root / "coco.tar", "coco", "benchmark"),
        spec(
            "coco_json",
            (tmp_path / "coco" / "captions_val.json").as_uri(),
            tmp_path / "coco" / "captions_val.json",
            "coco",
            "benchmark",
        ),
    ]
    df = acquire(specs, tmp_path / "out", max_bad_fraction=0.5)
    assert df["samples"].to_list() == [1, 2]  # the archive's junk image is quarantined; the bare JSON has no images
    assert (tmp_path / "out" / "coco" / "extracted" / "coco" / "captions_val.json").is_file()


def test_quarantine_counts_write_and_check(tmp_path):
    q = Quarantine()
    q.accept("a", 9)
    q.add("a", tmp_path / "f.tar", "k1", "image cannot be decoded")
    q.accept("b", 3)
    assert (q.accepted("a"), q.rejected("a"), q.bad_fraction("a"), q.bad_fraction("b")) == (9, 1, 0.1, 0.0)
    assert q.sources() == ["a", "b"]
    q.check(0.1)
    with pytest.raises(QuarantineError, match=r"'a': 1 of 10 samples rejected.*k1.*image cannot be decoded"):
        q.check(0.05)
    df = pl.read_parquet(q.write(tmp_path / "q.parquet"))
    assert df.to_dicts() == [
        {"source": "a", "file": str(tmp_path / "f.tar"), "key": "k1", "reason": "image cannot be decoded"}
    ]
    assert len(pl.read_parquet(Quarantine().write(tmp_path / "empty.parquet"))) == 0


@pytest.mark.parametrize(
    "fmt, role, ok",
    [
        ("webdataset", "text", False),
        ("obelics", "caption", False),
        ("coco", "sft", False),
        ("llava", "benchmark", False),
    ]
    + [("jsonl", "benchmark", True), ("llava", "sft", True), ("vqa", "benchmark", True)],
)
def test_a_role_must_fit_the_format(fmt, role, ok):
    entry = {"name": "s", "url": "x", "sha256": "0" * 64, "format": fmt, "role": role, "licence": "CC0"}
    if ok:
        assert from_dict({"data": {"sources": [entry]}}).data.sources[0].role == role
    else:
        with pytest.raises(ConfigError, match=rf"data\.sources\.0\.role: role '{role}' does not fit format '{fmt}'"):
            from_dict({"data": {"sources": [entry]}})
