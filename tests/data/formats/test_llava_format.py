import json

import pytest

from mm1.data.formats import (
    FormatError,
    count_llava,
    read_llava,
    read_multiple_choice,
    read_text_tasks,
    write_llava,
    write_multiple_choice,
    write_text_tasks,
)
from mm1.data.quarantine import Quarantine
from mm1.data.records import Conversation, MultipleChoice, TextTask


def convs(png):
    return [
        Conversation("c0", png(1), (("human", "<image>\nWhat is left?"), ("gpt", "A red ball."))),
        Conversation("c1", None, (("human", "Say hi."), ("gpt", "Hi."), ("human", "Again?"), ("gpt", "Hi again."))),
        Conversation("c2", png(2, "JPEG"), (("human", "Describe.\n<image>"), ("gpt", "Two cubes."))),
    ]


def test_llava_round_trip(tmp_path, png):
    path = write_llava(convs(png), tmp_path, "sft")
    entries = json.loads(path.read_text())
    assert entries[0] == {
        "id": "c0",
        "image": "images/sft/00000000.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is left?"},
            {"from": "gpt", "value": "A red ball."},
        ],
    }
    assert "image" not in entries[1] and entries[2]["image"] == "images/sft/00000002.jpg"
    assert read_llava(path) == convs(png)
    q = Quarantine()
    assert count_llava(path, q) == 3


def test_llava_bad_entries(tmp_path, png):
    path = write_llava(convs(png), tmp_path, "sft")
    entries = json.loads(path.read_text())
    entries[0]["image"] = "../../etc/passwd"
    entries[1]["conversations"][0]["from"] = "gpt"
    entries[2]["conversations"][0]["value"] = "no image token"
    entries.append({"id": "x"})
    path.write_text(json.dumps(entries))
    q = Quarantine()
    assert read_llava(path, quarantine=q, source="sft") == []
    reasons = {r.key: r.reason for r in q.records}
    assert "not a relative path inside" in reasons["c0"] and "alternate" in reasons["c1"]
    assert "<image>" in reasons["c2"] and "conversations" in reasons["x"]
    with pytest.raises(FormatError):
        read_llava(path)
    with pytest.raises(ValueError, match="<image>"):
        write_llava([Conversation("bad", png(), (("human", "hi"), ("gpt", "ho")))], tmp_path)


def test_multiple_choice_and_text_tasks_round_trip(tmp_path, png):
    items = [
        MultipleChoice("m0", png(4), "Which shape?", ("ball", "cube", "cone"), 1),
        MultipleChoice("m1", None, "2+2?", ("3", "4"), 1),
    ]
    path = write_multiple_choice(items, tmp_path, "mmb")
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {
        "id": "m0",
        "image": "images/mmb/00000000.png",
        "question": "Which shape?",
        "choices": ["ball", "cube", "cone"],
        "answer": 1,
    }
    assert read_multiple_choice(path) == items
    tasks = [TextTask("t0", "arith", "2+2=", "4"), TextTask("t1", "recall", "The ball is", "red")]
    assert read_text_tasks(write_text_tasks(tasks, tmp_path / "textcore.jsonl")) == tasks
    with pytest.raises(ValueError, match="answer"):
        write_multiple_choice([MultipleChoice("m", None, "q", ("a",), 3)], tmp_path)
