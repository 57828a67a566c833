import polars as pl
import pytest

from mm1.data.formats import FormatError, read_documents, write_documents
from mm1.data.quarantine import Quarantine
from mm1.data.records import InterleavedDoc


def docs(png):
    return [
        InterleavedDoc("d0", ("Intro.", None, "After the image."), (None, png(1), None), {"url": "http://x/0"}),
        InterleavedDoc("d1", (None, None, "Two images first."), (png(2), png(3, "JPEG"), None)),
        InterleavedDoc("d2", ("Text only ünïcode.",), (None,), {"k": [1, 2]}),
    ]


def test_round_trip(tmp_path, png):
    path = write_documents(docs(png), tmp_path / "docs.parquet")
    df = pl.read_parquet(path)
    assert df.columns == ["id", "texts", "images", "meta"]
    assert df.schema["images"] == pl.List(pl.Binary) and df.schema["texts"] == pl.List(pl.Utf8)
    q = Quarantine()
    assert list(read_documents(path, q)) == docs(png)
    assert q.accepted("docs.parquet") == 3


def test_bad_documents_are_quarantined(tmp_path, png):
    rows = [
        ("good", ["a", None], [None, png()], "{}"),
        ("mismatch", ["a", None], [None], "{}"),
        ("both", ["a"], [png()], "{}"),
        ("undecodable", [None], [b"\xff\xd8 junk"], "{}"),
        ("badmeta", ["a"], [None], "[1]"),
        (None, ["a"], [None], "{}"),
    ]
    schema = {"id": pl.Utf8, "texts": pl.List(pl.Utf8), "images": pl.List(pl.Binary), "meta": pl.Utf8}
    path = tmp_path / "bad.parquet"
    pl.DataFrame(rows, schema=schema, orient="row").write_parquet(path)
    q = Quarantine()
    assert [d.id for d in read_documents(path, q, "obelics")] == ["good"]
    reasons = {r.key: r.reason for r in q.records}
    assert set(reasons) == {"mismatch", "both", "undecodable", "badmeta", "row 5"}
    assert "2 texts vs 1 images" in reasons["mismatch"]
    assert "exactly one" in reasons["both"] and "cannot be decoded" in reasons["undecodable"]
    assert (q.accepted("obelics"), q.rejected("obelics")) == (1, 5)


def test_wrong_table_is_an_error(tmp_path):
    path = tmp_path / "other.parquet"
    pl.DataFrame({"id": ["a"], "text": ["b"]}).write_parquet(path)
    with pytest.raises(FormatError, match="missing columns"):
        list(read_documents(path, Quarantine()))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(FormatError, match="junk.parquet"):
        list(read_documents(tmp_path / "junk.parquet", Quarantine()))
