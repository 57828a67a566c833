"""SFT conversations in LLaVA format, and multiple-choice / text-task items as jsonl.

    out_dir/{name}.json    [{"id", "image": "images/{name}/00000000.png" (absent without image),
                             "conversations": [{"from": "human", "value": "<image>\\n..."},
                                               {"from": "gpt", "value": "..."}, ...]}]
    out_dir/{name}.jsonl   multiple choice: {"id", "image"?, "question", "choices", "answer"}
                           text tasks:      {"id", "task", "prompt", "answer", "choices"?}
    out_dir/images/{name}/{position:08d}.png   (the bytes as given; .jpg for JPEG)

Image paths are relative to the image root (default: the JSON's folder) and may not leave it.
Turns alternate human / gpt starting with human; ``<image>`` appears once, in the first human
turn, exactly when there is an image. Without a quarantine (the default) any bad entry raises
FormatError; with one, bad entries are recorded and left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mm1.atomic import write_bytes
from mm1.data.formats._common import (
    FormatError,
    Sink,
    check_fields,
    check_name,
    dump_json,
    load_json,
    read_image_file,
    write_image,
)
from mm1.data.formats.text import json_lines, write_jsonl
from mm1.data.quarantine import Quarantine
from mm1.data.records import Conversation, MultipleChoice, TextTask

IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")


def turns_problem(turns: tuple[tuple[str, str], ...], has_image: bool) -> str | None:
    """None when the turns form a valid LLaVA conversation, else why not."""
    if len(turns) < 2:
        return f"{len(turns)} turns; a conversation needs a human and a gpt turn at least"
    for i, (role, _) in enumerate(turns):
        if role != ROLES[i % 2]:
            return f"turn {i} is from {role!r}, expected {ROLES[i % 2]!r} (turns alternate human, gpt)"
    counts = [text.count(IMAGE_TOKEN) for _, text in turns]
    expected = [int(has_image)] + [0] * (len(turns) - 1)
    if counts != expected:
        where = "once, in the first human turn" if has_image else "nowhere (there is no image)"
        return f"{IMAGE_TOKEN} must appear {where}; counts per turn {counts}"
    return None


def write_llava(convs: Iterable[Conversation], out_dir: Path, name: str = "llava") -> Path:
    """Write ``out_dir/{name}.json`` and its images; return the JSON's path."""
    check_name("name", name)
    out_dir, entries = Path(out_dir), []
    for i, conv in enumerate(convs):
        if problem := turns_problem(conv.turns, conv.image is not None):
            raise ValueError(f"conversation {conv.id!r}: {problem}")
        entry: dict = {"id": conv.id}
        if conv.image is not None:
            entry["image"] = f"images/{name}/" + write_image(out_dir / "images" / name, f"{i:08d}", conv.image)
        entry["conversations"] = [{"from": role, "value": text} for role, text in conv.turns]
        entries.append(entry)
    return write_bytes(out_dir / f"{name}.json", dump_json(entries))


def read_llava(
    json_path: Path, image_root: Path | None = None, quarantine: Quarantine | None = None, source: str | None = None
) -> list[Conversation]:
    """The conversations of a LLaVA JSON file, images read from ``image_root`` (default: its folder)."""
    json_path = Path(json_path)
    sink = Sink(quarantine, source, json_path)
    root = Path(image_root) if image_root is not None else json_path.parent
    out = []
    for key, entry, turns in _conversations(json_path, sink):
        image = None
        if "image" in entry:
            image, problem = read_image_file(root, entry["image"])
            if problem:
                sink.reject(key, problem)
                continue
        out.append(Conversation(id=entry["id"], image=image, turns=turns))
        sink.accept()
    return out


def count_llava(json_path: Path, quarantine: Quarantine, source: str | None = None) -> int:
    """Check a LLaVA JSON file alone (image files not read) and count its conversations."""
    sink = Sink(quarantine, source, Path(json_path))
    n = sum(1 for _ in _conversations(Path(json_path), sink))
    quarantine.accept(sink.source, n)
    return n


def _conversations(json_path: Path, sink: Sink):
    """(key, entry, turns) per structurally valid entry; the others are rejected."""
    entries = load_json(json_path)
    if not isinstance(entries, list):
        raise FormatError(f"{json_path}: a LLaVA file is a JSON list of conversations")
    for i, entry in enumerate(entries):
        key = entry["id"] if isinstance(entry, dict) and isinstance(entry.get("id"), str) else f"[{i}]"
        if problem := check_fields(entry, {"id": str, "conversations": list}):
            sink.reject(key, problem)
            continue
        if "image" in entry and not isinstance(entry["image"], str):
            sink.reject(key, "field 'image' must be a relative path")
            continue
        turns = [
            (t.get("from"), t.get("value")) if isinstance(t, dict) else (None, None) for t in entry["conversations"]
        ]
        if not all(isinstance(r, str) and isinstance(v, str) for r, v in turns):
            sink.reject(key, "every turn must be {from: str, value: str}")
            continue
        if problem := turns_problem(tuple(turns), "image" in entry):
            sink.reject(key, problem)
            continue
        yield key, entry, tuple(turns)


def write_multiple_choice(items: Iterable[MultipleChoice], out_dir: Path, name: str = "multiple_choice") -> Path:
    """Write ``out_dir/{name}.jsonl`` and its images; return the jsonl's path."""
    check_name("name", name)
    out_dir, lines = Path(out_dir), []
    for i, item in enumerate(items):
        if not 0 <= item.answer < len(item.choices):
            raise ValueError(
                f"item {item.id!r}: answer {item.answer} is not an index of its {len(item.choices)} choices"
            )
        line: dict = {"id": item.id}
        if item.image is not None:
            line["image"] = f"images/{name}/" + write_image(out_dir / "images" / name, f"{i:08d}", item.image)
        lines.append(line | {"question": item.question, "choices": list(item.choices), "answer": item.answer})
    return write_jsonl(lines, out_dir / f"{name}.jsonl")


def read_multiple_choice(
    path: Path, image_root: Path | None = None, quarantine: Quarantine | None = None, source: str | None = None
) -> list[MultipleChoice]:
    """The items of a multiple-choice jsonl file, images read from ``image_root`` (default: its folder)."""
    path = Path(path)
    sink = Sink(quarantine, source, path)
    root = Path(image_root) if image_root is not None else path.parent
    out = []
    for key, obj in json_lines(path, sink, {"id": str, "question": str, "choices": list, "answer": int}):
        choices = obj["choices"]
        if not all(isinstance(c, str) for c in choices) or not 0 <= obj["answer"] < len(choices):
            sink.reject(key, "choices must be strings and answer an index of them")
            continue
        image = None
        if "image" in obj:
            image, problem = (
                read_image_file(root, obj["image"]) if isinstance(obj["image"], str) else (None, "bad image")
            )
            if problem:
                sink.reject(key, problem)
                continue
        out.append(MultipleChoice(obj["id"], image, obj["question"], tuple(choices), obj["answer"]))
        sink.accept()
    return out


def write_text_tasks(items: Iterable[TextTask], path: Path) -> Path:
    """Write text-task items as jsonl."""
    lines = []
    for t in items:
        if t.choices and t.answer not in t.choices:
            raise ValueError(f"text task {t.id!r}: answer {t.answer!r} is not among its choices {list(t.choices)}")
        line = {"id": t.id, "task": t.task, "prompt": t.prompt, "answer": t.answer}
        lines.append(line | ({"choices": list(t.choices)} if t.choices else {}))
    return write_jsonl(lines, path)


def read_text_tasks(path: Path, quarantine: Quarantine | None = None, source: str | None = None) -> list[TextTask]:
    """The items of a text-task jsonl file."""
    sink = Sink(quarantine, source, Path(path))
    out = []
    for key, obj in json_lines(Path(path), sink, {"id": str, "task": str, "prompt": str, "answer": str}):
        choices = obj.get("choices", [])
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            sink.reject(key, "choices must be a list of strings")
            continue
        if choices and obj["answer"] not in choices:
            sink.reject(key, f"answer {obj['answer']!r} is not among the choices")
            continue
        out.append(TextTask(obj["id"], obj["task"], obj["prompt"], obj["answer"], tuple(choices)))
        sink.accept()
    return out
