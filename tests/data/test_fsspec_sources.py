"""Sources by URL scheme through fsspec: memory://, local://, a test file system registered by the tests
(fails on demand), and hf:// resolved without the network. No socket is opened by any test here."""

from __future__ import annotations

import hashlib
import io
import socket
from dataclasses import dataclass, field

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.registry import known_implementations
from PIL import Image

from mm1.config import ConfigError, from_dict
from mm1.config.data import SourceSpec
from mm1.data import remote
from mm1.data.acquire import AcquireError, acquire
from mm1.data.download import DownloadChecksumError, fetch
from mm1.data.formats import write_caption_shards
from mm1.data.records import CaptionSample

DATA = b"".join(b'{"id": "d%d", "text": "a line of text number %d"}\n' % (i, i) for i in range(2000))


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (i * 40 % 256, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source(url: str, data: bytes = DATA, **extra) -> SourceSpec:
    return SourceSpec(name="corpus", url=url, sha256=sha(data), format="jsonl", role="text", licence="CC0", **extra)


@dataclass
class Plan:
    """How FlakyFS fails in one test, and what it saw."""

    cut_at: int | None = None  # a read past this byte raises cut_with (once)
    cut_with: BaseException = field(default_factory=lambda: ConnectionResetError("connection reset by peer"))
    rewrite: bytes | None = None  # put in place of the file when the read is cut
    info_error: BaseException | None = None  # raised by the first info()
    hide_size: bool = False  # info() without a size
    no_seek: bool = False  # files that cannot seek
    opens: list = field(default_factory=list)
    seeks: list = field(default_factory=list)


class FlakyFS(MemoryFileSystem):
    """The in-memory file system under the test's own scheme, failing as ``FlakyFS.plan`` says."""

    protocol = "mm1flaky"
    plan = Plan()

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix(f"{cls.protocol}://"))

    def info(self, path, **kwargs):
        error, FlakyFS.plan.info_error = FlakyFS.plan.info_error, None
        if error is not None:
            raise error
        info = super().info(path, **kwargs)
        return {k: v for k, v in info.items() if k != "size"} if FlakyFS.plan.hide_size else info

    def _open(self, path, mode="rb", **kwargs):
        if mode == "rb":
            FlakyFS.plan.opens.append(path)
        return _CutFile(super()._open(path, mode, **kwargs), path, self)


class _CutFile:
    def __init__(self, f, path, fs) -> None:
        self.f, self.path, self.fs = f, path, fs

    def seek(self, offset, whence=0):
        FlakyFS.plan.seeks.append(offset)
        if FlakyFS.plan.no_seek:
            raise ValueError("Cannot seek streaming file")
        return self.f.seek(offset, whence)

    def read(self, size=-1):
        cut = FlakyFS.plan.cut_at
        if cut is not None and self.f.tell() >= cut:
            FlakyFS.plan.cut_at = None
            if FlakyFS.plan.rewrite is not None:
                self.fs.pipe_file(self.path, FlakyFS.plan.rewrite)
            raise FlakyFS.plan.cut_with
        if cut is not None:
            size = cut - self.f.tell() if size < 0 else min(size, cut - self.f.tell())
        return self.f.read(size)

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture(autouse=True)
def _no_network(loopback_downloads, monkeypatch):
    """No waits between retries (tests/data/conftest.py), and any socket a test would open is an error."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to use the network: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def flaky(request):
    """The FlakyFS scheme, reset, holding DATA at mm1flaky://<test>/corpus.jsonl; its files go afterwards."""
    fsspec.register_implementation(FlakyFS.protocol, FlakyFS, clobber=True)
    FlakyFS.plan = Plan()
    root = f"/h26-{sha(request.node.nodeid.encode())[:12]}"
    FlakyFS().pipe_file(f"{root}/corpus.jsonl", DATA)
    yield f"{FlakyFS.protocol}://{root}/corpus.jsonl"
    FlakyFS().rm(root, recursive=True)


@pytest.fixture
def memory(request):
    """DATA at memory://<test>/corpus.jsonl (fsspec's MemoryFileSystem); its files go afterwards."""
    root = f"/h26-{sha(request.node.nodeid.encode())[:12]}"
    fs = MemoryFileSystem()
    fs.pipe_file(f"{root}/corpus.jsonl", DATA)
    yield f"memory://{root}/corpus.jsonl"
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_memory_source_is_acquired_and_not_fetched_twice(tmp_path, memory):
    out = tmp_path / "out"
    df = acquire([source(memory)], out, max_bad_fraction=0.0)
    assert df["samples"].to_list() == [2000] and df["url"].to_list() == [memory]
    assert (out / "corpus" / "corpus.jsonl").read_bytes() == DATA
    assert not list(out.rglob("*.partial*"))
    MemoryFileSystem().rm(memory)  # in place with the right hash: the source is not read again
    assert acquire([source(memory)], out, max_bad_fraction=0.0)["samples"].to_list() == [2000]


def test_local_filesystem_through_fsspec(tmp_path, monkeypatch):
    samples = [CaptionSample(f"{i:04d}", png(i), {"alt": f"ball {i}"}) for i in range(3)]
    [shard] = write_caption_shards(samples, tmp_path / "src", shard_size=3)
    opened, open_file = [], remote.open_file
    monkeypatch.setattr(remote, "open_file", lambda url, *a: opened.append(url) or open_file(url, *a))
    url = f"local://{shard}"
    spec = SourceSpec(
        name="caps", url=url, sha256=sha(shard.read_bytes()), format="webdataset", role="caption", licence="CC0"
    )
    df = acquire([spec], tmp_path / "out", max_bad_fraction=0.0)
    assert df["samples"].to_list() == [3] and opened == [url]
    assert (tmp_path / "out" / "caps" / shard.name).read_bytes() == shard.read_bytes()


def test_wrong_sha256_stops_and_leaves_nothing(tmp_path, memory):
    wrong = "0" * 64
    spec = source(memory).model_copy(update={"sha256": wrong})
    with pytest.raises(DownloadChecksumError) as e:
        fetch(spec, tmp_path / "corpus")
    assert "'corpus'" in str(e.value) and wrong in str(e.value) and sha(DATA) in str(e.value)
    assert list((tmp_path / "corpus").iterdir()) == []


@pytest.mark.parametrize(
    "limits, hide_size, words",
    [
        ({"max_bytes": 4096}, False, "announces .* more than its cap of 4096 bytes"),
        ({"max_bytes": 4096}, True, "sent more than its cap of 4096 bytes"),
        ({"bytes": len(DATA) - 1}, False, f"announces {len(DATA)} bytes, but its entry declares"),
        ({"bytes": 4096}, True, "sent more than the 4096 bytes its entry declares"),
    ],
    ids=["announced-over-cap", "streamed-over-cap", "announced-not-declared", "streamed-over-declared"],
)
def test_cap_stops_an_oversized_file(tmp_path, flaky, limits, hide_size, words):
    FlakyFS.plan.hide_size = hide_size
    with pytest.raises(AcquireError, match=words):
        fetch(source(flaky, **limits), tmp_path / "corpus")
    assert list((tmp_path / "corpus").iterdir()) == []


@pytest.mark.parametrize("no_seek", [False, True], ids=["seek", "cannot-seek"])
def test_a_read_cut_mid_stream_resumes_where_it_stopped(tmp_path, flaky, no_seek):
    FlakyFS.plan.cut_at, FlakyFS.plan.no_seek = 20_000, no_seek
    path = fetch(source(flaky), tmp_path / "corpus")
    assert path.read_bytes() == DATA and FlakyFS.plan.seeks == [20_000]
    assert len(FlakyFS.plan.opens) == (3 if no_seek else 2)  # a file that cannot seek is read whole again


def test_a_file_changed_between_attempts_comes_whole(tmp_path, flaky):
    new = DATA.replace(b"text", b"TEXT")
    FlakyFS.plan.cut_at, FlakyFS.plan.rewrite = 20_000, new
    path = fetch(source(flaky, new), tmp_path / "corpus")
    assert path.read_bytes() == new and len(FlakyFS.plan.opens) == 2 and FlakyFS.plan.seeks == []


def test_a_transient_error_before_reading_is_retried(tmp_path, flaky):
    FlakyFS.plan.info_error = TimeoutError("read timed out")
    assert fetch(source(flaky), tmp_path / "corpus").read_bytes() == DATA


@pytest.mark.parametrize(
    "error, words",
    [
        (PermissionError("Access Denied"), "access refused.*HF_TOKEN"),
        (ValueError("unexpected"), "ValueError: unexpected"),
    ],
)
def test_a_permanent_error_mid_read_stops_at_once(tmp_path, flaky, error, words):
    FlakyFS.plan.cut_at, FlakyFS.plan.cut_with = 20_000, error
    with pytest.raises(AcquireError, match=f"'corpus': {flaky}: {words}.*20000 bytes are kept") as e:
        fetch(source(flaky), tmp_path / "corpus")
    assert len(FlakyFS.plan.opens) == 1 and "\n" not in str(e.value)


def test_missing_file_and_directory_are_one_line_errors(tmp_path, flaky):
    root = flaky.rsplit("/", 1)[0]
    for url, words in [(f"{root}/gone.jsonl", "does not exist"), (root, "is a directory")]:
        with pytest.raises(AcquireError, match=f"'corpus': {url}.*{words}") as e:
            fetch(source(url), tmp_path / "corpus")
        assert "\n" not in str(e.value)
    assert FlakyFS.plan.opens == []


def test_a_scheme_whose_package_is_missing_names_it(tmp_path, monkeypatch):
    entry = {"class": "mm1_absent_fs.FileSystem", "err": "Install mm1_absent_fs to read mm1absent://"}
    monkeypatch.setitem(known_implementations, "mm1absent", entry)
    with pytest.raises(AcquireError) as e:
        fetch(source("mm1absent://bucket/corpus.jsonl"), tmp_path / "corpus")
    assert str(e.value) == (
        "source 'corpus': mm1absent://bucket/corpus.jsonl: reading mm1absent:// needs the Python package "
        "'mm1_absent_fs', which is not installed (pip install mm1_absent_fs)"
    )


def test_hf_resolves_to_huggingface_hub_without_network():
    from huggingface_hub import HfFileSystem

    url = "hf://datasets/some-org/some-data/train/corpus.jsonl"
    fs, path = remote.filesystem(url)  # the autouse fixture fails on any socket
    assert isinstance(fs, HfFileSystem) and "hf" in fs.protocol
    assert path == "datasets/some-org/some-data/train/corpus.jsonl"
    assert source(url).url == url and remote.is_remote(url) and not remote.is_remote("https://x/y")


@pytest.mark.parametrize(
    "error, transient",
    [
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (OSError(5, "I/O error"), True),
        (type("TransportError", (Exception,), {})("connect failed"), True),
        (type("HttpError", (Exception,), {"code": 503})("unavailable"), True),
        (type("HttpError", (Exception,), {"code": 429})("slow down"), True),
        (type("HfHubHTTPError", (OSError,), {"status_code": 404})("missing"), False),
        (type("ClientResponseError", (Exception,), {"status": 403})("forbidden"), False),
        (FileNotFoundError("k"), False),
        (PermissionError("k"), False),
        (IsADirectoryError("k"), False),
        (type("OfflineModeIsEnabled", (ConnectionError,), {})("HF_HUB_OFFLINE=1"), False),
        (ValueError("bad path"), False),
    ],
)
def test_which_errors_are_transient(error, transient):
    assert isinstance(remote.classify("s3://b/k", error), remote.Transient if transient else remote.Unavailable)


@pytest.mark.parametrize(
    "url, words",
    [
        ("s3://bucket/shards/*.tar", "is a glob"),
        ("hf://datasets/org/name/part-[0-9].parquet", "is a glob"),
        ("simplecache::s3://bucket/a.tar", "chained or wrapping"),
        ("zip://a.jsonl", "chained or wrapping"),
        ("nosuchfs://bucket/a.tar", "URL scheme 'nosuchfs' is not one mm1 can read"),
    ],
)
def test_config_refuses_urls_it_cannot_read(url, words):
    entry = {"name": "s", "url": url, "sha256": "0" * 64, "format": "jsonl", "role": "text", "licence": "CC0"}
    with pytest.raises(ConfigError, match=rf"data\.sources\.0\.url: .*{words}"):
        from_dict({"data": {"sources": [entry]}})
    ok = {**entry, "url": "gs://bucket/a.jsonl"}  # gcsfs need not be installed to validate the config
    assert from_dict({"data": {"sources": [ok]}}).data.sources[0].url == ok["url"]
