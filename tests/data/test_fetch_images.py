"""URL-only sources (released OBELICS, URL + caption tables) through the image-fetch step, against a
loopback HTTP server started by the test: dead, slow, malformed, throttled and opted-out images."""

from __future__ import annotations

import hashlib
import io
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import polars as pl
import pytest
from PIL import Image

from mm1.config import load
from mm1.config.data import FetchConfig, SourceSpec
from mm1.data.acquire import AcquireError, acquire
from mm1.data.fetch_images import USER_AGENT, fetch_images
from mm1.data.formats import FormatError, read_caption_shards, read_documents
from mm1.data.packed_io import read_packed
from mm1.data.stages import make_tokenizer, pack

SLOW_S = 0.8
FAST = FetchConfig(
    workers=4,
    per_host_per_second=1000,
    timeout_s=0.3,
    retries=1,
    backoff_s=0.01,
    max_retry_after_s=0.05,
    max_image_bytes=4096,
    max_missing_fraction=0.9,
)


def image(i: int, fmt: str = "PNG", size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (i * 40 % 256, 90, 200)).save(buf, fmt)
    return buf.getvalue()


def noise_png() -> bytes:  # a valid image larger than FAST.max_image_bytes
    buf = io.BytesIO()
    Image.frombytes("L", (96, 96), random.Random(0).randbytes(96 * 96)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(autouse=True)
def _loopback(loopback_downloads):
    """Every test here downloads from its own loopback server (tests/data/conftest.py)."""


@pytest.fixture
def server():
    """Serves ``state.files`` (path -> bytes) and the special paths below; records (path, time, UA)."""
    state = SimpleNamespace(files={}, requests=[])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            state.requests.append((self.path, time.monotonic(), self.headers.get("User-Agent")))
            seen = sum(1 for p, _, _ in state.requests if p == self.path)
            if self.path == "/img/slow.png":
                time.sleep(SLOW_S)
            if self.path == "/img/busy.png" and seen == 1:
                self.send_response(429)
                self.send_header("Retry-After", "30")  # capped at max_retry_after_s
                self.end_headers()
                return
            if self.path == "/img/gone.png":
                self.send_error(404)
                return
            if self.path == "/img/flaky.png":
                self.send_error(503)
                return
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            if self.path == "/img/noai.png":
                self.send_header("X-Robots-Tag", "noimageai, noai")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (slow, too large)
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    for name in ("slow.png", "busy.png", "noai.png", "a.png"):
        state.files[f"/img/{name}"] = image(len(name))
    state.files["/img/b.jpg"] = image(7, "JPEG")
    state.files["/img/bad.png"] = b"\x89PNG\r\n\x1a\n but not really"
    state.files["/img/big.png"] = noise_png()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def serve(state, path: str, data: bytes, name: str, fmt: str, role: str) -> SourceSpec:
    state.files[path] = data
    sha = hashlib.sha256(data).hexdigest()
    return SourceSpec(name=name, url=state.url + path, sha256=sha, format=fmt, role=role, licence="CC-BY-4.0")


def obelics_parquet(rows: list[tuple[list, list]], page: str = "https://example.org/page") -> bytes:
    """A table in the released OBELICS schema: no id, image URLs, JSON metadata columns."""
    table = {
        "images": [urls for urls, _ in rows],
        "texts": [texts for _, texts in rows],
        "metadata": [json.dumps([{"alt_text": "alt"} if u else None for u in urls]) for urls, _ in rows],
        "general_metadata": [json.dumps({"url": f"{page}/{i}", "warc_record_offset": i}) for i in range(len(rows))],
    }
    buf = io.BytesIO()
    pl.DataFrame(
        table,
        schema={c: pl.List(pl.Utf8) for c in ("images", "texts")}
        | {
            "metadata": pl.Utf8,
            "general_metadata": pl.Utf8,
        },
    ).write_parquet(buf)
    return buf.getvalue()


def documents(u: str) -> list[tuple[list, list]]:
    return [
        ([None, f"{u}/img/a.png", None, f"{u}/img/gone.png"], ["A cat.", None, "On a mat.", None]),
        ([f"{u}/img/b.jpg", None, f"{u}/img/busy.png"], [None, "A dog.", None]),
        ([f"{u}/img/noai.png", None, f"{u}/img/bad.png"], [None, "Opted out.", None]),
        ([None, f"{u}/img/slow.png", f"{u}/img/big.png", "ftp://127.0.0.1/c.png"], ["Lost.", None, None, None]),
        ([f"{u}/img/a.png"], ["lists of different lengths", None]),
        ([None, f"{u}/img/a.png"], ["The cat again.", None]),
    ]


def test_released_obelics_with_image_urls_is_fetched_materialised_and_resumed(tmp_path, server):
    spec = serve(
        server, "/obelics.parquet", obelics_parquet(documents(server.url)), "obelics", "obelics_urls", "interleaved"
    )
    out = tmp_path / "acquired"
    manifest = acquire([spec], out, max_bad_fraction=0.5, fetch_cfg=FAST)

    row = manifest.row(0, named=True)
    assert (row["format"], row["role"], row["path"]) == ("obelics", "interleaved", "obelics/fetched/documents.parquet")
    assert (row["images"], row["images_missing"]) == (9, 6)  # a.png counted once; 6 dead, opted out, bad...
    assert (row["samples"], row["bad_samples"]) == (3, 1)
    assert row["sha256"] == hashlib.sha256((out / row["path"]).read_bytes()).hexdigest()
    docs = list(read_documents(out / row["path"]))
    assert [d.texts for d in docs] == [("A cat.", None, "On a mat."), (None, "A dog.", None), ("The cat again.", None)]
    assert docs[0].images[1] == docs[2].images[1] == server.files["/img/a.png"]
    assert docs[1].images[0] == server.files["/img/b.jpg"]  # JPEG bytes as they came
    assert docs[1].images[2] == server.files["/img/busy.png"]  # 429 then OK
    assert docs[0].id != docs[2].id and docs[0].meta["general_metadata"]["url"] == "https://example.org/page/0"

    reasons = {r["key"].split(" ")[-1]: r["reason"] for r in pl.read_parquet(out / "quarantine.parquet").to_dicts()}
    assert "HTTP 404" in reasons[f"{server.url}/img/gone.png"]
    assert "X-Robots-Tag: noai" in reasons[f"{server.url}/img/noai.png"]
    assert "not an image" in reasons[f"{server.url}/img/bad.png"]
    assert (
        "timed out" in reasons[f"{server.url}/img/slow.png"] and "tries again" in reasons[f"{server.url}/img/slow.png"]
    )
    assert "max_image_bytes" in reasons[f"{server.url}/img/big.png"]
    assert "unsupported URL scheme 'ftp'" in reasons["ftp://127.0.0.1/c.png"]
    assert "different lengths" not in str(reasons) and "2 texts vs 1 images" in str(reasons)  # the malformed row
    assert sum("left with no image" in r for r in reasons.values()) == 2
    assert {ua for p, _, ua in server.requests if p.startswith("/img/")} == {USER_AGENT}
    assert sum(p == "/img/busy.png" for p, _, _ in server.requests) == 2

    before = len(server.requests)
    again = acquire([spec], out, max_bad_fraction=0.5, fetch_cfg=FAST)
    rerun = [p for p, _, _ in server.requests[before:]]
    assert rerun == ["/img/slow.png", "/img/slow.png"]  # only the transient failure, retried; no dead link again
    assert again.drop("fetched_at").equals(manifest.drop("fetched_at"))


def test_too_many_missing_images_fail_the_stage_naming_the_source(tmp_path, server):
    spec = serve(
        server, "/obelics.parquet", obelics_parquet(documents(server.url)), "web", "obelics_urls", "interleaved"
    )
    strict = FAST.model_copy(update={"max_missing_fraction": 0.5})
    with pytest.raises(AcquireError, match=r"source 'web': 6 of 9 images .*66\.7% > data\.fetch\.max_missing_fraction"):
        acquire([spec], tmp_path / "acquired", max_bad_fraction=0.5, fetch_cfg=strict)
    assert pl.read_parquet(tmp_path / "acquired" / "quarantine.parquet").height > 0  # written for the failure too
    assert not (tmp_path / "acquired" / "manifest.parquet").exists()


def test_per_host_rate_limit_and_transient_failures(tmp_path, server):
    rate, n = 20.0, 6
    for i in range(n):
        server.files[f"/img/r{i}.png"] = image(i)
    cfg = FAST.model_copy(update={"per_host_per_second": rate, "workers": n, "retries": 2})
    got = fetch_images([f"{server.url}/img/r{i}.png" for i in range(n)], tmp_path / "cache", cfg)
    assert all(o.path is not None for o in got.values())
    times = sorted(t for p, t, _ in server.requests)
    assert times[-1] - times[0] >= (n - 1) / rate * 0.95  # N requests at R/s take at least (N-1)/R s

    flaky = fetch_images([f"{server.url}/img/flaky.png"], tmp_path / "cache", cfg)
    assert sum(p == "/img/flaky.png" for p, _, _ in server.requests) == 3  # 1 + 2 retries of a 503
    assert not flaky[f"{server.url}/img/flaky.png"].permanent  # a later run tries again
    assert not list((tmp_path / "cache").glob("*.failed"))


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "tsv"])
def test_url_caption_table_becomes_a_webdataset_shard(tmp_path, server, kind):
    u = server.url
    rows = [(f"{u}/img/a.png", "a small cat"), (f"{u}/img/gone.png", "a lost dog"), (f"{u}/img/b.jpg", "")]
    rows += [(f"{u}/img/b.jpg", "a blue sky")]
    if kind == "parquet":
        buf = io.BytesIO()
        pl.DataFrame({"URL": [r[0] for r in rows], "TEXT": [r[1] for r in rows]}).write_parquet(buf)
        data = buf.getvalue()
    elif kind == "jsonl":
        data = "".join(json.dumps({"url": url, "caption": c}) + "\n" for url, c in rows).encode()
    else:  # CC3M: caption<TAB>url, no header
        data = "".join(f"{c}\t{url}\n" for url, c in rows).encode()
    spec = serve(server, f"/caps.{kind}", data, "caps", "url_captions", "caption")
    out = tmp_path / "acquired"
    row = acquire([spec], out, max_bad_fraction=0.5, fetch_cfg=FAST).row(0, named=True)
    assert (row["format"], row["path"], row["samples"], row["bad_samples"]) == (
        "webdataset",
        "caps/fetched/captions-000000.tar",
        2,
        1,  # the empty caption
    )
    assert (row["images"], row["images_missing"]) == (3, 1)
    samples = list(read_caption_shards([out / row["path"]]))
    assert [(s.captions, s.image) for s in samples] == [
        ({"alt": "a small cat"}, server.files["/img/a.png"]),
        ({"alt": "a blue sky"}, server.files["/img/b.jpg"]),
    ]
    assert samples[0].meta["url"] == f"{u}/img/a.png"


def test_acquired_url_sources_become_packed_training_data(tmp_path, server):
    u = server.url
    for i in range(8):
        server.files[f"/img/p{i}.png"] = image(i, size=(16, 16))
    docs = [([None, f"{u}/img/p{i}.png", None], [f"Page {i} shows", None, f"a shape number {i}."]) for i in range(4)]
    buf = io.BytesIO()
    pl.DataFrame(
        {"URL": [f"{u}/img/p{i}.png" for i in range(4, 8)], "TEXT": [f"shape {i}" for i in range(4, 8)]}
    ).write_parquet(buf)
    specs = [
        serve(server, "/docs.parquet", obelics_parquet(docs), "docs", "obelics_urls", "interleaved"),
        serve(server, "/caps.parquet", buf.getvalue(), "caps", "url_captions", "caption"),
    ]
    acquire(specs, tmp_path / "acquired", max_bad_fraction=0.0, fetch_cfg=FAST)
    manifest = tmp_path / "acquired" / "manifest.parquet"
    cfg = load(
        None,
        [
            "data.mixture.text=0",
            "tokenizer.vocab_size=300",
            "train.steps=2",
            "train.warmup_steps=1",
            "train.micro_batch_size=2",
            "train.global_batch_size=2",
        ],
    )
    tok = make_tokenizer(cfg.tokenizer, manifest, tmp_path / "tok", 0.0)
    pack(cfg, manifest, tok.path, tmp_path / "packed")
    seqs = read_packed(tmp_path / "packed" / "train.parquet")
    assert len(seqs) == 4 and sum(len(s.images) for s in seqs) > 0
    fetched = {server.files[f"/img/p{i}.png"] for i in range(8)}
    assert {im for s in seqs for im in s.images} <= fetched


def test_a_cache_that_cannot_be_written_and_a_table_of_the_wrong_schema_are_one_line_errors(
    tmp_path, server, monkeypatch
):
    from mm1.data import fetch_images as module

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "write_bytes", full)
    with pytest.raises(AcquireError, match=r"cannot write fetched images to .*No space left on device"):
        fetch_images([f"{server.url}/img/a.png"], tmp_path / "cache", FAST)

    bytes_layout = io.BytesIO()
    pl.DataFrame({"id": ["d0"], "texts": [["hi"]], "images": [[None]], "meta": ["{}"]}).write_parquet(bytes_layout)
    spec = serve(server, "/mm1.parquet", bytes_layout.getvalue(), "wrong", "obelics_urls", "interleaved")
    with pytest.raises(FormatError, match=r"not a released-OBELICS table, missing columns .*format obelics"):
        acquire([spec], tmp_path / "acquired", max_bad_fraction=0.0, fetch_cfg=FAST)
