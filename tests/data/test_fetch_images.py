"""URL-only sources (released OBELICS, URL + caption tables) through the image-fetch step, against a
loopback HTTP server started by the test: dead, slow, malformed, throttled and opted-out images."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import urlparse

import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mm1.config import load
from mm1.config.data import FetchConfig, SourceSpec
from mm1.data.acquire import AcquireError, acquire
from mm1.data.fetch_images import USER_AGENT, fetch_images
from mm1.data.formats import FormatError, read_caption_shards, read_documents
from mm1.data.packed_io import read_packed
from mm1.data.quarantine import Quarantine
from mm1.data.sources import load_pretraining_sources
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
    state = SimpleNamespace(files={}, requests=[], second=threading.Event(), overlapped=[])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            state.requests.append((self.path, time.monotonic(), self.headers.get("User-Agent")))
            seen = sum(1 for p, _, _ in state.requests if p == self.path)
            if self.path == "/img/slow.png":
                time.sleep(SLOW_S)
            if self.path == "/img/second.png":
                state.second.set()
            if self.path == "/img/first.png":  # answered once second.png is asked for (or after 3 s)
                state.overlapped.append(state.second.wait(3.0))
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
    for name in ("slow.png", "busy.png", "noai.png", "a.png", "first.png", "second.png"):
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


def test_a_caption_source_larger_than_a_shard_becomes_several_shards_read_in_order(tmp_path, server):
    u = server.url
    for i in range(8):
        server.files[f"/img/s{i}.png"] = image(i)
    urls = [f"{u}/img/s{i}.png" for i in range(8)]
    urls[3], urls[6] = f"{u}/img/gone.png", urls[0]  # a dead link; an image again, two blocks later
    urls.insert(1, f"{u}/img/flaky.png")  # transient: tried (with its retry) in its block only, not again
    urls.insert(7, f"{u}/img/flaky.png")
    buf = io.BytesIO()
    pl.DataFrame({"URL": urls, "TEXT": [f"pair {i}" for i in range(len(urls))]}).write_parquet(buf)
    spec = serve(server, "/caps.parquet", buf.getvalue(), "caps", "url_captions", "caption")
    cfg = FAST.model_copy(update={"block_size": 2, "shard_size": 3})
    out = tmp_path / "acquired"
    manifest = acquire([spec], out, max_bad_fraction=0.0, fetch_cfg=cfg)

    assert manifest["path"].to_list() == [f"caps/fetched/captions-{i:06d}.tar" for i in range(3)]
    assert manifest["name"].to_list() == ["caps"] * 3 and manifest["samples"].to_list() == [3, 3, 1]
    assert set(zip(manifest["images"], manifest["images_missing"], strict=True)) == {(8, 2)}  # the source's, on each
    assert sum(p == "/img/s0.png" for p, _, _ in server.requests) == 1
    assert sum(p == "/img/flaky.png" for p, _, _ in server.requests) == 2  # 1 + 1 retry, in the first block only
    quarantine = Quarantine()
    pairs = load_pretraining_sources(out / "manifest.parquet", quarantine)["caption"]
    kept = [i for i, url in enumerate(urls) if "gone" not in url and "flaky" not in url]
    assert [s.key for s in pairs] == [f"{i:09d}" for i in kept]  # every pair once, in the table's order
    assert [s.captions["alt"] for s in pairs] == [f"pair {i}" for i in kept]
    assert [s.image for s in pairs] == [server.files[urlparse(urls[i]).path] for i in kept]
    assert len(quarantine) == 0 and quarantine.accepted("caps") == 0  # files are read under their own names
    assert sorted(p.name for p in (out / "caps" / "fetched").iterdir()) == [f"captions-{i:06d}.tar" for i in range(3)]


def many_documents(state, n: int, size: tuple[int, int] = (8, 6), gone_every: int = 4) -> list[tuple[list, list]]:
    """``n`` documents of two images each (every ``gone_every``-th document's second one is dead)."""
    docs = []
    for i in range(n):
        for k in range(2):
            state.files[f"/img/d{i}-{k}.png"] = noise(i * 2 + k, size) if size[0] > 16 else image(i * 2 + k, size=size)
        second = f"{state.url}/img/gone.png" if i % gone_every == gone_every - 1 else f"{state.url}/img/d{i}-1.png"
        docs.append(([None, f"{state.url}/img/d{i}-0.png", second], [f"Document {i} shows", None, None]))
    return docs


def noise(seed: int, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("L", size, random.Random(seed).randbytes(size[0] * size[1])).save(buf, "PNG")
    return buf.getvalue()


def test_a_document_source_over_several_blocks_gives_what_one_block_gives(tmp_path, server):
    spec = serve(
        server, "/docs.parquet", obelics_parquet(many_documents(server, 10)), "docs", "obelics_urls", "interleaved"
    )
    runs = {}
    for block in (3, 100):
        out = tmp_path / f"block{block}"
        cfg = FAST.model_copy(update={"block_size": block})
        row = acquire([spec], out, max_bad_fraction=0.0, fetch_cfg=cfg).row(0, named=True)
        assert row["path"] == "docs/fetched/documents.parquet"
        runs[block] = (row, list(read_documents(out / row["path"])), pq.ParquetFile(out / row["path"]).num_row_groups)
    (small, docs_small, groups_small), (large, docs_large, groups_large) = runs[3], runs[100]
    assert (groups_small, groups_large) == (4, 1)  # one row group per block of 3 documents: 3 + 3 + 3 + 1
    assert docs_small == docs_large and len(docs_small) == 10  # ids, order, texts, image bytes, meta
    assert docs_small[3].images == (None, server.files["/img/d3-0.png"])  # its dead image dropped
    for key in ("samples", "images", "images_missing", "bad_samples"):
        assert small[key] == large[key], key
    assert (small["images"], small["images_missing"]) == (19, 1)  # 10 + 8 distinct images + gone.png


def test_a_run_that_fails_half_way_leaves_the_previous_files_and_no_half_file(tmp_path, server, monkeypatch):
    from mm1.data import materialise as module

    spec = serve(
        server, "/docs.parquet", obelics_parquet(many_documents(server, 6)), "docs", "obelics_urls", "interleaved"
    )
    out, cfg = tmp_path / "acquired", FAST.model_copy(update={"block_size": 2})
    first = acquire([spec], out, max_bad_fraction=0.0, fetch_cfg=cfg).row(0, named=True)
    fetched = out / "docs" / "fetched"
    before = {p.name: p.read_bytes() for p in fetched.iterdir()}
    calls, document = [], module._document

    def killed_half_way(doc, outcomes, src):
        calls.append(doc.id)
        if len(calls) == 5:
            raise KeyboardInterrupt  # like a kill: nothing after this runs in the stage
        return document(doc, outcomes, src)

    monkeypatch.setattr(module, "_document", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        acquire([spec], out, max_bad_fraction=0.0, fetch_cfg=cfg.model_copy(update={"block_size": 1}))
    assert {p.name: p.read_bytes() for p in fetched.iterdir()} == before  # the previous complete folder
    assert [p.name for p in (out / "docs").iterdir() if p.name.startswith(".")] == []  # no half folder left
    monkeypatch.setattr(module, "_document", document)
    again = acquire([spec], out, max_bad_fraction=0.0, fetch_cfg=cfg).row(0, named=True)
    assert {k: v for k, v in again.items() if k != "fetched_at"} == {
        k: v for k, v in first.items() if k != "fetched_at"
    }


MATERIALISE = """
import json, sys
from pathlib import Path
from mm1.config.data import FetchConfig
from mm1.data.materialise import materialise
from mm1.data.quarantine import Quarantine

def kib(field):  # VmRSS (now) or VmHWM (peak since the last reset), KiB
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1])

cfg, path = FetchConfig.model_validate_json(sys.argv[1]), Path(sys.argv[2])
Path("/proc/self/clear_refs").write_text("5")  # the peak restarts here: imports are not counted
before = kib("VmRSS")
done = materialise("docs", "obelics_urls", path, cfg, Quarantine(), Quarantine())
print(json.dumps({"growth_kib": kib("VmHWM") - before, "samples": sum(n for _, n in done.files)}))
"""


def _materialise_growth(state, n: int, folder, cfg: FetchConfig) -> tuple[int, int]:
    """Peak RSS growth (KiB) of a fresh process that fetches and writes ``n`` documents of two 64 KiB images."""
    path = folder / "docs.parquet"
    folder.mkdir()
    path.write_bytes(obelics_parquet(many_documents(state, n, size=(256, 256), gone_every=n + 1)))
    args = [cfg.model_dump_json(), str(path)]
    done = subprocess.run([sys.executable, "-c", MATERIALISE, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return got["growth_kib"], got["samples"]


def test_materialising_peak_memory_is_flat_in_the_number_of_documents(tmp_path, server):
    """16 and 128 documents (2 and 16 MiB of incompressible images) in blocks of 8: the peak RSS grows by
    the same amount (within 1.3x, and by far less than the 14 MiB of images that holding them would cost)."""
    cfg = FAST.model_copy(update={"block_size": 8, "max_image_bytes": 1 << 20, "workers": 4})
    n, small = _materialise_growth(server, 16, tmp_path / "n", cfg)
    eight_n, large = _materialise_growth(server, 128, tmp_path / "8n", cfg)
    assert (small, large) == (16, 128)
    extra_kib = (tmp_path / "8n" / "fetched" / "documents.parquet").stat().st_size / 1024 * 7 / 8
    assert extra_kib > 112 * 2 * 64 * 0.95  # the 112 extra documents' images are all in the file
    assert eight_n < 1.3 * n, (n, eight_n)
    assert eight_n - n < 0.25 * extra_kib, (n, eight_n, extra_kib)


def test_a_tsv_is_read_line_by_line_and_bytes_that_are_not_utf8_are_one_line_errors(tmp_path):
    from mm1.data.formats import read_url_captions

    path = tmp_path / "cc3m.tsv"
    good = b"a cat\thttp://h/1.png\r\nhttp://h/2.png\ta dog\n\n" * 2000  # 80 KB: more than a read buffer
    path.write_bytes(good + b"caf\xe9\thttp://h/3.png\n")
    got = []
    with pytest.raises(FormatError, match=r"cc3m\.tsv: neither parquet, jsonl nor a UTF-8 tsv"):
        got.extend((r.url, r.caption) for r in read_url_captions(path, Quarantine(), "cc3m"))
    assert got[:2] == [("http://h/1.png", "a cat"), ("http://h/2.png", "a dog")]
    assert 0 < len(got) < 4000  # rows came before the damage was read, not after reading the whole file


def test_a_url_source_left_without_images_holds_no_samples_beside_one_of_several_files(tmp_path, server):
    u = server.url
    tables = {}
    for name, urls in (("dead", [f"{u}/img/gone.png"] * 2), ("live", [f"{u}/img/a.png", f"{u}/img/b.jpg"])):
        buf = io.BytesIO()
        pl.DataFrame({"URL": urls, "TEXT": ["a caption"] * 2}).write_parquet(buf)
        tables[name] = serve(server, f"/{name}.parquet", buf.getvalue(), name, "url_captions", "caption")
    cfg = FAST.model_copy(update={"shard_size": 1, "max_missing_fraction": 1.0})
    with pytest.raises(AcquireError, match=r"sources \['dead'\] hold no samples"):
        acquire([tables["dead"], tables["live"]], tmp_path / "acquired", max_bad_fraction=0.0, fetch_cfg=cfg)
    assert len(list((tmp_path / "acquired" / "live" / "fetched").iterdir())) == 2  # two files, one name: not empty
    assert list((tmp_path / "acquired" / "dead" / "fetched").iterdir()) == []
    assert not (tmp_path / "acquired" / "manifest.parquet").exists()


def test_the_next_block_is_fetched_while_one_is_written(tmp_path, server):
    u = server.url
    docs = [([None, f"{u}/img/first.png"], ["One", None]), ([None, f"{u}/img/second.png"], ["Two", None])]
    spec = serve(server, "/docs.parquet", obelics_parquet(docs), "docs", "obelics_urls", "interleaved")
    cfg = FAST.model_copy(update={"block_size": 1, "timeout_s": 5.0})
    row = acquire([spec], tmp_path / "acquired", max_bad_fraction=0.0, fetch_cfg=cfg).row(0, named=True)
    assert server.overlapped == [True]  # block 2's image was asked for before block 1's had come
    assert (row["samples"], row["images"], row["images_missing"]) == (2, 2, 0)
