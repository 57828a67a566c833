"""Item 4: corrupt inputs give a clear error or a quarantine record naming the file and the reason;
nothing is dropped silently.

Two kinds of corruption. A file damaged *after* the world or acquire stage wrote it (a flipped bit on
disk, a hand edit) no longer has the sha256 its manifest records: every reader that goes through the
manifest refuses it with DataChecksumError. A file that is already bad at its origin (its hash is what
the source says) is read by the real readers: a file that cannot be read at all is a FormatError
naming it, a bad sample a quarantine record naming file, key and reason, and every sample written is
either accepted or quarantined.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import polars as pl
import pytest
from faultkit import sha256
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

from mm1.config.data import SourceSpec
from mm1.data import formats
from mm1.data.acquire import AcquireError, acquire
from mm1.data.formats import FormatError
from mm1.data.quarantine import Quarantine
from mm1.data.records import CaptionSample, InterleavedDoc, TextDoc
from mm1.data.sft import load_conversations
from mm1.data.sources import DataChecksumError, load_pretraining_sources

pytestmark = pytest.mark.faults(item=4)


def png(i: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (i * 40 % 256, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def world(tiny_world, tmp_path) -> Path:
    """A copy of the shared tiny world's datasets and manifest, for the test to corrupt."""
    return Path(shutil.copytree(tiny_world["world"], tmp_path / "world"))


# ---- damaged after it was written: the manifest's sha256 catches it -------------------------------


def flip_inside_text(path: Path) -> None:
    """Change one letter of the file into another letter, so that it still decodes, differently."""
    data = bytearray(path.read_bytes())
    if path.suffix == ".tar":
        with tarfile.open(path) as tar:
            at = next(m.offset_data for m in tar if m.name.endswith(".txt"))
    elif path.suffix == ".parquet":
        at = len(data) // 2  # compressed pages: any byte
    else:
        at = data.index(b'"', data.index(b'"text"' if path.suffix == ".jsonl" else b'"value"') + 8) + 1
    data[at] = ord("q") if data[at] != ord("q") else ord("z")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("role", ["caption", "interleaved", "text", "sft"])
def test_a_byte_flipped_after_writing_is_a_checksum_error_naming_the_file(world, role):
    manifest = world / "manifest.parquet"
    row = pl.read_parquet(manifest).filter(pl.col("role") == role).row(0, named=True)
    path = world / row["path"]
    flip_inside_text(path)
    if role in ("caption", "text"):  # the readers alone accept the changed file: only the hash can tell
        q = Quarantine()
        read = formats.read_caption_shards([path], q) if role == "caption" else formats.read_text(path, q)
        assert sum(1 for _ in read) == row["samples"] and len(q) == 0
    with pytest.raises(DataChecksumError) as e:
        if role == "sft":
            load_conversations(manifest, Quarantine())
        else:
            load_pretraining_sources(manifest, Quarantine())
    message = str(e.value)
    for part in (str(manifest), str(path), row["sha256"], sha256(path)):
        assert part in message


def test_a_file_missing_from_the_manifest_is_an_error_naming_it(world):
    manifest = world / "manifest.parquet"
    (world / "text" / "corpus.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(manifest))}.*corpus\\.jsonl"):
        load_pretraining_sources(manifest, Quarantine())


def test_an_intact_world_reads_every_sample(world):
    """The check does not refuse good files: every sample the manifest counts is read."""
    manifest = world / "manifest.parquet"
    q = Quarantine()
    sources = load_pretraining_sources(manifest, q)
    counts = pl.read_parquet(manifest).group_by("role").agg(pl.col("samples").sum())
    expected = dict(counts.iter_rows())
    assert {role: len(v) for role, v in sources.items()} == {r: expected[r] for r in sources}
    assert len(q) == 0


# ---- bad at the origin: acquire reads it with the real readers ------------------------------------


def caption_shard(folder: Path, n: int, bad: dict[int, tuple[str, bytes]] | None = None) -> Path:
    """A shard of n samples; ``bad`` replaces member ``(ext, bytes)`` of sample i."""
    members = []
    for i in range(n):
        parts = {"png": png(i), "txt": f"a ball number {i}".encode()}
        if bad and i in bad:
            parts[bad[i][0]] = bad[i][1]
        members += [(f"s{i:03d}.{ext}", data) for ext, data in sorted(parts.items())]
    path = folder / "shard.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def jsonl(folder: Path, n: int, bad: dict[int, bytes] | None = None) -> Path:
    lines = [json.dumps({"id": f"d{i}", "text": f"document {i}"}).encode() for i in range(n)]
    for i, line in (bad or {}).items():
        lines[i] = line
    path = folder / "corpus.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def documents(folder: Path, n: int) -> Path:
    docs = [InterleavedDoc(f"doc{i}", (f"text {i}", None), (None, png(i))) for i in range(n)]
    return formats.write_documents(docs, folder / "docs.parquet")


def truncated(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


SOURCES = {"webdataset": "caption", "obelics": "interleaved", "jsonl": "text"}

# case -> (format, make(folder) -> file, samples written, None | (key, words of the reason))
BAD_SAMPLES = {
    "undecodable-image": ("webdataset", lambda d: caption_shard(d, 6, {2: ("png", b"\x89PNG\r\n garbage")}), 6),
    "caption-not-utf8": ("webdataset", lambda d: caption_shard(d, 6, {4: ("txt", b"caf\xe9 au lait")}), 6),
    "jsonl-not-utf8": ("jsonl", lambda d: jsonl(d, 5, {1: b'{"id": "d1", "text": "caf\xe9"}'}), 5),
    "jsonl-missing-text": ("jsonl", lambda d: jsonl(d, 5, {3: b'{"id": "d3"}'}), 5),
    "jsonl-cut-mid-line": ("jsonl", lambda d: truncated(jsonl(d, 5), 0.9), 5),
}
BAD_REASONS = {
    "undecodable-image": ("s002", "image cannot be decoded"),
    "caption-not-utf8": ("s004", "not UTF-8"),
    "jsonl-not-utf8": ("line 2", "not UTF-8"),
    "jsonl-missing-text": ("d3", "missing field 'text'"),
    "jsonl-cut-mid-line": ("line 5", "not valid JSON"),
}


def spec(name: str, fmt: str, path: Path) -> SourceSpec:
    return SourceSpec(name=name, url=str(path), sha256=sha256(path), format=fmt, role=SOURCES[fmt], licence="CC0-1.0")


@pytest.mark.parametrize("case", sorted(BAD_SAMPLES))
def test_bad_samples_are_quarantined_naming_file_key_and_reason(tmp_path, case):
    fmt, make, written = BAD_SAMPLES[case]
    origin = tmp_path / "origin"
    origin.mkdir()
    path = make(origin)
    out = tmp_path / "out"
    manifest = acquire([spec("src", fmt, path)], out, max_bad_fraction=0.5)
    [row] = manifest.iter_rows(named=True)
    records = pl.read_parquet(out / "quarantine.parquet")
    assert row["samples"] + row["bad_samples"] == written == row["samples"] + records.height  # no silent drop
    [record] = records.iter_rows(named=True)
    key, reason = BAD_REASONS[case]
    assert record["file"] == str(out / row["path"]) and record["key"] == key and reason in record["reason"]


# case -> (format, make(folder) -> file, error type, words of the message after the file name)
UNREADABLE = {
    "truncated-tar": ("webdataset", lambda d: truncated(caption_shard(d, 6), 0.6), FormatError, "truncated"),
    "truncated-parquet": ("obelics", lambda d: truncated(documents(d, 4), 0.7), FormatError, "not a readable parquet"),
    "zero-byte-parquet": ("obelics", lambda d: truncated(documents(d, 4), 0.0), FormatError, "not a readable parquet"),
    "zero-byte-tar": ("webdataset", lambda d: truncated(caption_shard(d, 2), 0.0), FormatError, "not a readable"),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_an_unreadable_file_is_an_error_naming_it(tmp_path, case):
    fmt, make, error, words = UNREADABLE[case]
    origin = tmp_path / "origin"
    origin.mkdir()
    path = make(origin)
    out = tmp_path / "out"
    with pytest.raises(error) as e:
        acquire([spec("src", fmt, path)], out, max_bad_fraction=1.0)
    assert path.name in str(e.value) and words in str(e.value)
    assert not (out / "manifest.parquet").exists()


def test_an_empty_parquet_is_an_error_naming_the_source(tmp_path):
    path = formats.write_documents([], tmp_path / "empty.parquet")
    assert pl.read_parquet(path).height == 0  # the right columns, no rows
    with pytest.raises(AcquireError, match="'empty'.*no samples"):
        acquire([spec("empty", "obelics", path)], tmp_path / "out", max_bad_fraction=1.0)
    assert not (tmp_path / "out" / "manifest.parquet").exists()


@pytest.mark.parametrize("at, xor", [(54, 121), (449, 13)])
def test_a_parquet_that_makes_polars_panic_is_a_format_error(tmp_path, at, xor):
    """Found by the fuzz: these flips make polars panic (pyo3's PanicException is a BaseException, which
    ``except Exception`` lets through). Any outcome but a FormatError naming the file, or every row
    accounted for, fails."""
    path = documents(tmp_path, 3)
    data = bytearray(path.read_bytes())
    data[at] ^= xor
    path.write_bytes(bytes(data))
    q = Quarantine()
    try:
        got = sum(1 for _ in formats.read_documents(path, q, "f"))
    except FormatError as e:
        assert str(path) in str(e) and "not a readable parquet" in str(e)
    else:
        assert got + len(q) == 3


# ---- benchmark and SFT files with a missing field -------------------------------------------------


def drop_field(path: Path, list_field: str | None, index: int, field: str) -> None:
    obj = json.loads(path.read_text())
    entries = obj[list_field] if list_field else obj
    del entries[index][field]
    path.write_text(json.dumps(obj))


# case -> (file, the list holding the entries (None: the file is the list), field removed from entry 1)
MISSING = {
    "coco-caption": ("benchmarks/coco/captions_val.json", "annotations", "caption"),
    "coco-image_id": ("benchmarks/coco/captions_val.json", "annotations", "image_id"),
    "coco-file_name": ("benchmarks/coco/captions_val.json", "images", "file_name"),
    "vqa-question": ("benchmarks/vqav2/vqav2_val_questions.json", "questions", "question"),
    "vqa-answers": ("benchmarks/vqav2/vqav2_val_annotations.json", "annotations", "answers"),
    "llava-conversations": ("sft/llava.json", None, "conversations"),
}


@pytest.mark.parametrize("case", sorted(MISSING))
def test_missing_fields_are_quarantined_naming_key_and_field(world, case):
    rel, list_field, field = MISSING[case]
    drop_field(world / rel, list_field, 1, field)
    q = Quarantine()
    if case.startswith("coco"):
        file = world / rel
        bench = formats.read_coco_captions(file, quarantine=q, source="b")
        units = len(json.loads(file.read_text())["images"])
        got, unit_rejections = len(bench.images), [r for r in q.records if r.key.startswith("image")]
    elif case.startswith("vqa"):
        file = world / "benchmarks/vqav2/vqav2_val_questions.json"
        bench = formats.read_vqa(file, quarantine=q, source="b")
        units = len(json.loads(file.read_text())["questions"])
        got, unit_rejections = len(bench.items), [r for r in q.records if r.file == str(file)]
    else:
        file = world / rel
        units = len(json.loads(file.read_text()))
        got = len(formats.read_llava(file, quarantine=q, source="b"))
        unit_rejections = list(q.records)
    assert got + len(unit_rejections) == units and q.accepted("b") == got  # every entry accounted for
    named = [r for r in q.records if r.file == str(world / rel) and f"'{field}'" in r.reason]
    assert len(named) == 1, q.records
    assert named[0].key.endswith("[1]") or named[0].key in ("question 11", "sft-000001"), named[0]


@pytest.mark.parametrize(
    "rel, field",
    [
        ("benchmarks/coco/captions_val.json", "annotations"),
        ("benchmarks/coco/captions_val.json", "images"),
        ("benchmarks/vqav2/vqav2_val_questions.json", "questions"),
        ("benchmarks/vqav2/vqav2_val_annotations.json", "annotations"),
    ],
)
def test_a_file_missing_a_top_level_field_is_an_error_naming_file_and_field(world, rel, field):
    path = world / rel
    obj = json.loads(path.read_text())
    del obj[field]
    path.write_text(json.dumps(obj))
    read = formats.read_coco_captions if "coco" in rel else formats.read_vqa
    first = path if "coco" in rel else world / "benchmarks/vqav2/vqav2_val_questions.json"
    with pytest.raises(FormatError, match=f"{re.escape(str(path))}.*missing field '{field}'"):
        read(first, quarantine=Quarantine(), source="b")


# ---- fuzz: random flips and cuts through the readers ----------------------------------------------

KEYS = [f"smpl-{c}" for c in "abcd"]


def fuzz_files(folder: Path) -> dict[str, Path]:
    samples = [CaptionSample(k, png(i), {"alt": f"caption {k}"}) for i, k in enumerate(KEYS)]
    [shard] = formats.write_caption_shards(samples, folder, shard_size=4)
    text = formats.write_text([TextDoc(f"d{i}", f"doc {i} text") for i in range(6)], folder / "t.jsonl")
    images = [{"id": i, "file_name": f"{i}.png"} for i in range(4)]
    anns = [{"id": j, "image_id": j % 4, "caption": f"caption {j}"} for j in range(6)]
    coco = folder / "captions_val.json"
    coco.write_text(json.dumps({"images": images, "annotations": anns}))
    return {"webdataset": shard, "obelics": documents(folder, 3), "jsonl": text, "coco": coco}


@pytest.fixture(scope="module")
def fuzz_origin(tmp_path_factory) -> dict[str, tuple[bytes, int]]:
    """format -> (file bytes, how many of them hold data): a shard's zero padding is left out, so
    that most flips land in headers and members."""
    out = {}
    for fmt, path in fuzz_files(tmp_path_factory.mktemp("fuzz")).items():
        data = path.read_bytes()
        out[fmt] = data, len(data.rstrip(b"\0")) if fmt == "webdataset" else len(data)
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """Where each fuzz example writes its damaged file (one folder for all examples)."""
    return tmp_path_factory.mktemp("fuzz-scratch")


def read_and_count(fmt: str, path: Path, data: bytes, q: Quarantine) -> None:
    """Read with the real reader; assert every unit of the damaged file is accepted or quarantined."""
    if fmt == "webdataset":
        got = {s.key for s in formats.read_caption_shards([path], q, "f")}
        seen = got | {r.key for r in q.records}
        # a sample may only go unaccounted when its name itself was damaged
        assert all(k in seen or f"{k}.".encode() not in data for k in KEYS), (got, q.records)
    elif fmt == "obelics":
        got = sum(1 for _ in formats.read_documents(path, q, "f"))
        assert got + len(q) == pl.read_parquet(path).height
    elif fmt == "jsonl":
        got = sum(1 for _ in formats.read_text(path, q, "f"))
        lines = [raw for raw in io.BytesIO(data)]
        assert got + len(q) == sum(1 for raw in lines if not _blank(raw))
    else:
        got = formats.count_coco_captions(path, q, "f")
        images = json.loads(data.decode())["images"]
        assert got + sum(r.key.startswith("image") for r in q.records) == len(images)
    assert q.accepted("f") == (len(got) if isinstance(got, set) else got)


def _blank(raw: bytes) -> bool:
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


@given(
    fmt=st.sampled_from(["webdataset", "obelics", "jsonl", "coco"]),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=3),
    keep=st.one_of(st.just(1.0), st.floats(0, 1)),
)
def test_reader_fuzz_gives_a_format_error_or_accounts_for_every_sample(fuzz_origin, scratch, fmt, flips, keep):
    origin, span = fuzz_origin[fmt]
    data = bytearray(origin)
    for where, xor in flips:
        data[int(where * span)] ^= xor
    data = bytes(data[: int(len(data) * keep)])
    path = scratch / f"fuzz-{fmt}{'.tar' if fmt == 'webdataset' else '.x'}"
    path.write_bytes(data)
    q = Quarantine()
    try:
        read_and_count(fmt, path, data, q)
    except FormatError as e:
        assert str(path) in str(e)
        event(f"{fmt}: FormatError")
        return
    event(f"{fmt}: read, {'some' if len(q) else 'none'} quarantined")
    for r in q.records:
        assert r.reason and r.file in (str(path), path.name), r
