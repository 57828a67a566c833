import json

import pytest

from mm1.data.formats import FormatError, read_text, write_text
from mm1.data.quarantine import Quarantine
from mm1.data.records import TextDoc

DOCS = [TextDoc("t0", "The red ball is left of the cube."), TextDoc("t1", "Zwölf ☕\nlines", {"lang": "de", "n": 2})]


def test_round_trip(tmp_path):
    path = write_text(DOCS, tmp_path / "text.jsonl")
    assert json.loads(path.read_text().splitlines()[1]) == {"id": "t1", "text": "Zwölf ☕\nlines", "lang": "de", "n": 2}
    q = Quarantine()
    assert list(read_text(path, q)) == DOCS
    assert q.accepted("text.jsonl") == 2


def test_bad_lines_are_quarantined(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [
        b'{"id": "ok", "text": "fine"}',
        '{"id": "latin", "text": "caf\u00e9"}'.encode("latin-1"),
        b'{"id": "notext"}',
        b'{"id": 7, "text": "numeric id"}',
        b"not json",
        b"",
        b'["a list"]',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    q = Quarantine()
    assert [d.id for d in read_text(path, q, "txt")] == ["ok"]
    reasons = {r.key: r.reason for r in q.records}
    assert set(reasons) == {"line 2", "notext", "line 4", "line 5", "line 7"}
    assert "not UTF-8" in reasons["line 2"] and "missing field 'text'" in reasons["notext"]
    assert "'id'" in reasons["line 4"] and "not valid JSON" in reasons["line 5"]
    with pytest.raises(FormatError, match="line 2"):
        list(read_text(path))


def test_reserved_meta_keys(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        write_text([TextDoc("a", "b", {"text": "c"})], tmp_path / "x.jsonl")
