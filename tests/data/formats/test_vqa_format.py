import json

import pytest

from mm1.data.formats import FormatError, count_vqa, read_vqa, write_vqa
from mm1.data.quarantine import Quarantine
from mm1.data.records import VQABenchmark, VQAItem


def bench(png):
    items = [
        VQAItem(10, 1, "What color is the ball?", ("red",) * 6 + ("blue",) * 4, "other", "what color is the"),
        VQAItem(11, 1, "Is there a cube?", ("yes", "no", "no", "yes"), "yes/no", "is there a"),
        VQAItem(12, 2, "How many balls?", ("2",), "number", "how many"),
    ]
    return VQABenchmark("vqav2_synth", "val", {1: png(1), 2: png(2)}, items)


def test_round_trip(tmp_path, png):
    qpath, apath = write_vqa(bench(png), tmp_path)
    assert (qpath.name, apath.name) == ("vqav2_synth_val_questions.json", "vqav2_synth_val_annotations.json")
    qs, anns = json.loads(qpath.read_text()), json.loads(apath.read_text())
    assert {"info", "task_type", "data_type", "data_subtype", "questions"} <= set(qs)
    assert qs["questions"][0] == {"image_id": 1, "question": "What color is the ball?", "question_id": 10}
    a = anns["annotations"]
    assert [x["multiple_choice_answer"] for x in a] == ["red", "yes", "2"]  # most frequent; first among ties
    assert a[0]["answers"][0] == {"answer": "red", "answer_confidence": "yes", "answer_id": 1}
    assert set(a[0]) == {"question_id", "image_id", "question_type", "answer_type", "multiple_choice_answer", "answers"}
    assert read_vqa(qpath) == bench(png)
    assert read_vqa(qpath, apath, tmp_path / "images" / "val") == bench(png)


def test_coco_image_names_are_found(tmp_path, png):
    qpath, _ = write_vqa(bench(png), tmp_path)
    for p in (tmp_path / "images" / "val").iterdir():
        p.rename(p.with_name(f"COCO_val2014_{p.name}").with_suffix(".jpg"))
    assert read_vqa(qpath).images == bench(png).images


def test_bad_questions(tmp_path, png):
    qpath, apath = write_vqa(bench(png), tmp_path)
    (tmp_path / "images" / "val" / "000000000002.png").unlink()
    anns = json.loads(apath.read_text())
    del anns["annotations"][0]
    apath.write_text(json.dumps(anns))
    q = Quarantine()
    got = read_vqa(qpath, quarantine=q, source="vqa")
    assert [i.question_id for i in got.items] == [11] and set(got.images) == {1}
    assert {r.key: r.reason[:8] for r in q.records} == {"question 10": "no annot", "question 12": "no image"}
    with pytest.raises(FormatError):
        read_vqa(qpath)
    q = Quarantine()
    assert count_vqa(qpath, q, "vqa") == 3 and count_vqa(apath, q, "vqa") == 2
