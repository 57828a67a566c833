"""Text-only documents as jsonl: one JSON object per line, ``{"id": str, "text": str, ...meta}``.

Fields other than id and text are the document's meta. A line that is not UTF-8, not a JSON
object, or lacks a string id or text goes to the quarantine (key ``line N``, 1-based, or the id).
Blank lines are not documents and are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mm1.atomic import write_with
from mm1.data.formats._common import Sink, check_fields
from mm1.data.quarantine import Quarantine
from mm1.data.records import TextDoc


def write_jsonl(objects: Iterable[dict[str, Any]], path: Path) -> Path:
    """Write one compact JSON object per line (atomically); keys in the given order."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for obj in objects:
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")

    return write_with(Path(path), write)


def json_lines(path: Path, sink: Sink, fields: dict[str, type | tuple[type, ...]]) -> Iterator[tuple[str, dict]]:
    """(key, object) per line that is a UTF-8 JSON object with ``fields`` of the given types; other
    lines are rejected. The key is the object's id where it has a string one, else ``line N``."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            key = f"line {n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                sink.reject(key, f"not UTF-8 ({e})")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                sink.reject(key, f"not valid JSON ({e})")
                continue
            if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                key = obj["id"]
            if problem := check_fields(obj, fields):
                sink.reject(key, problem)
                continue
            yield key, obj


def write_text(docs: Iterable[TextDoc], path: Path) -> Path:
    """Write text documents as jsonl; meta keys may not be "id" or "text"."""

    def line(doc: TextDoc) -> dict[str, Any]:
        if {"id", "text"} & doc.meta.keys():
            raise ValueError(f"document {doc.id!r}: meta keys 'id' and 'text' are reserved")
        return {"id": doc.id, "text": doc.text, **doc.meta}

    return write_jsonl(map(line, docs), path)


def read_text(path: Path, quarantine: Quarantine | None = None, source: str | None = None) -> Iterator[TextDoc]:
    """The documents of one jsonl file in line order. Bad lines are recorded in ``quarantine`` under
    ``source`` (default: the file name); without a quarantine the first one raises FormatError."""
    sink = Sink(quarantine, source, Path(path))
    for _, obj in json_lines(Path(path), sink, {"id": str, "text": str}):
        meta = {k: v for k, v in obj.items() if k not in ("id", "text")}
        sink.accept()
        yield TextDoc(id=obj["id"], text=obj["text"], meta=meta)
