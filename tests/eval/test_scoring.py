"""Scoring result files: CIDEr against the official COCO pipeline, VQA by hand, writers, bad inputs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mm1.data.formats._common import FormatError
from mm1.eval.scoring import (
    read_caption_predictions,
    read_vqa_predictions,
    score_captions,
    score_vqa,
    write_caption_predictions,
    write_vqa_predictions,
)
from mm1.world.language import reference_captions
from mm1.world.scene import sample_scene

# Captions the PTB tokenizer has work to do on: capitals, punctuation, quotes, clitics.
HARD_CAPTIONS = [
    "A RED circle, isn't it?",
    "It's a big blue square.",
    "Don't miss the yellow star!",
    "There's a green triangle; it's small -- \"tiny\" even.",
    "Two shapes: a large Red Circle and a cube...",
    "They can't see the man's 3.5 t-shirts",
]


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _coco_refs(references: dict[int, list[str]]) -> dict:
    images = [{"id": i, "file_name": f"{i:012d}.png", "height": 64, "width": 64} for i in references]
    annotations = [{"image_id": i, "caption": c} for i, refs in references.items() for c in refs]
    for k, ann in enumerate(annotations):
        ann["id"] = k + 1
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations}


def _world_benchmark(
    seed: int, n_images: int = 2 * len(HARD_CAPTIONS) + 18
) -> tuple[dict[int, list[str]], dict[int, str]]:
    """World references (a few hard captions mixed in) and predictions: a paraphrase or another image's."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, 3) for _ in range(n_images)]
    refs = {1000 + k: reference_captions(s, rng, 4) for k, s in enumerate(scenes)}
    preds = {}
    for k, scene in enumerate(scenes):
        source = scene if rng.random() < 0.5 else scenes[int(rng.integers(len(scenes)))]
        preds[1000 + k] = reference_captions(source, rng, 1)[0]
    for k, caption in enumerate(HARD_CAPTIONS):
        preds[1000 + 2 * k] = caption
        refs[1000 + 2 * k + 1][0] = caption
    return refs, preds


def _official_cider(refs_path: Path, pred_path: Path) -> tuple[float, dict[int, float]]:
    """CIDEr-D as pycocoevalcap's COCOEvalCap computes it (its tokenizer, then its Cider scorer)."""
    import pycocoevalcap.cider.cider as cider_module  # test dependencies (pyproject [test])
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb_module
    import pycocotools.coco as coco_module

    if not shutil.which("java"):
        if os.environ.get("MM1_NO_JAVA") == "1":  # scripts/test-env sets it where java cannot be installed
            pytest.skip(
                "no java for pycocoevalcap's PTB tokenizer: apt-get install default-jre-headless (or make test as root)"
            )
        pytest.fail("pycocoevalcap's PTB tokenizer needs java: apt-get install default-jre-headless", pytrace=False)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = coco_module.COCO(str(refs_path))
        coco_res = coco.loadRes(str(pred_path))
    ids = coco.getImgIds()
    tokenizer = ptb_module.PTBTokenizer()
    gts = tokenizer.tokenize({i: coco.imgToAnns[i] for i in ids})
    res = tokenizer.tokenize({i: coco_res.imgToAnns[i] for i in ids})
    score, per_image = cider_module.Cider().compute_score(gts, res)
    return float(score), dict(zip(gts.keys(), map(float, per_image), strict=True))


def test_cider_matches_the_official_pipeline(tmp_path: Path) -> None:
    refs, preds = _world_benchmark(0)
    refs_path = _write_json(tmp_path / "captions_val.json", _coco_refs(refs))
    pred_path = write_caption_predictions(tmp_path / "preds.json", preds)
    official, official_per_image = _official_cider(refs_path, pred_path)
    scores = score_captions(pred_path, refs_path)
    assert official > 0.3  # a meaningful corpus, not all zeros
    assert scores["CIDEr"] == pytest.approx(100 * official, rel=1e-9)
    assert scores["n_images"] == len(refs)
    assert scores["per_image"].keys() == official_per_image.keys()
    for image_id, score in official_per_image.items():
        assert scores["per_image"][image_id] == pytest.approx(100 * score, rel=1e-9, abs=1e-9)


def test_cider_needs_no_image_file_name(tmp_path: Path) -> None:
    refs, preds = _world_benchmark(1)
    obj = _coco_refs(refs)
    for image in obj["images"]:
        del image["file_name"]
    refs_path = _write_json(tmp_path / "refs.json", obj)
    pred_path = write_caption_predictions(tmp_path / "preds.json", preds)
    exact = write_caption_predictions(tmp_path / "exact.json", {i: r[1] for i, r in refs.items()})
    assert score_captions(exact, refs_path)["CIDEr"] > score_captions(pred_path, refs_path)["CIDEr"]


def _vqa_files(tmp_path: Path) -> tuple[Path, Path]:
    """Four questions; their answers are those of the hand-worked cases in test_vqa_metric."""
    specs = {
        11: (1, ["yes"] * 10, "yes/no", "is there"),
        12: (1, ["no"] * 10, "yes/no", "is there"),
        21: (2, ["2"] * 3 + ["3"] * 7, "number", "how many"),
        22: (2, ["red"] * 2 + ["blue"] * 8, "other", "what color"),
    }
    questions = [{"image_id": img, "question": f"q{qid}?", "question_id": qid} for qid, (img, *_) in specs.items()]
    annotations = [
        {
            "question_id": qid,
            "image_id": img,
            "answer_type": atype,
            "question_type": qtype,
            "multiple_choice_answer": answers[-1],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)],
        }
        for qid, (img, answers, atype, qtype) in specs.items()
    ]
    q = _write_json(tmp_path / "vqa_val_questions.json", {"task_type": "Open-Ended", "questions": questions})
    a = _write_json(tmp_path / "vqa_val_annotations.json", {"annotations": annotations})
    return q, a


def test_score_vqa(tmp_path: Path) -> None:
    q, a = _vqa_files(tmp_path)
    pred = write_vqa_predictions(tmp_path / "preds.json", {22: "Red", 21: "two", 12: "yes", 11: "yes"})
    # 11: 1.0; 12: 0; 21: "two" -> "2" (answers not unanimous), given by 3 of 10 -> 0.9; 22: "red" by 2 -> 0.6.
    scores = score_vqa(pred, q, a)
    assert scores["n_questions"] == 4
    assert scores["accuracy"] == pytest.approx(100 * (1 + 0 + 0.9 + 0.6) / 4, abs=1e-9)
    assert scores["per_answer_type"] == pytest.approx({"yes/no": 50.0, "number": 90.0, "other": 60.0}, abs=1e-9)
    assert scores["per_question_type"]["how many"] == pytest.approx(90.0, abs=1e-9)
    assert scores["per_question"] == pytest.approx({11: 100.0, 12: 0.0, 21: 90.0, 22: 60.0}, abs=1e-9)


def test_writers_write_the_official_format_sorted(tmp_path: Path) -> None:
    path = write_caption_predictions(tmp_path / "out" / "caps.json", {7: "b ü", 3: "a"})
    assert json.loads(path.read_text("utf-8")) == [{"image_id": 3, "caption": "a"}, {"image_id": 7, "caption": "b ü"}]
    assert read_caption_predictions(path) == {3: "a", 7: "b ü"}
    path = write_vqa_predictions(tmp_path / "vqa.json", {5: "yes", 2: "no"})
    assert json.loads(path.read_text()) == [{"question_id": 2, "answer": "no"}, {"question_id": 5, "answer": "yes"}]
    assert read_vqa_predictions(path) == {2: "no", 5: "yes"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["caps.json", "out", "vqa.json"]  # no temporary left
    with pytest.raises(ValueError, match=r"image_id '3' must be an int"):
        write_caption_predictions(tmp_path / "x.json", {"3": "a"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"the answer for question_id 3 must be a string"):
        write_vqa_predictions(tmp_path / "x.json", {3: None})  # type: ignore[dict-item]
    assert not (tmp_path / "x.json").exists()


def _error(path: Path, message: str) -> str:
    """A pytest `match` pattern: the file's path, then the message (a regex)."""
    return re.escape(str(path)) + ".*" + message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[{", r"not valid JSON"),
        ('{"image_id": 1, "caption": "x"}', r"must be a JSON list .* got a JSON dict"),
        ('[{"image_id": 1}]', r"\[entry 0\]: missing field 'caption'"),
        ('[{"image_id": 1, "caption": "x"}, {"image_id": "2", "caption": "y"}]', r"\[entry 1\]: field 'image_id'"),
        ('[{"image_id": 1, "caption": 5}]', r"\[entry 0\]: field 'caption' has type int"),
        ('[{"image_id": true, "caption": "x"}]', r"\[entry 0\]: field 'image_id' has type bool"),
        ('["x"]', r"\[entry 0\]: expected a JSON object, got str"),
        (
            '[{"image_id": 1, "caption": "x"}, {"image_id": 2, "caption": "y"}, {"image_id": 1, "caption": "z"}]',
            r"\[entry 2\]: image_id 1 occurs twice \(entries 0 and 2\)",
        ),
    ],
)
def test_bad_caption_predictions(tmp_path: Path, content: str, message: str) -> None:
    refs_path = _write_json(tmp_path / "refs.json", _coco_refs({1: ["a b"], 2: ["c d"]}))
    pred_path = tmp_path / "preds.json"
    pred_path.write_text(content)
    with pytest.raises(FormatError, match=_error(pred_path, message)):
        score_captions(pred_path, refs_path)


def test_caption_predictions_must_cover_the_benchmark(tmp_path: Path) -> None:
    refs_path = _write_json(tmp_path / "refs.json", _coco_refs({i: ["a b"] for i in range(1, 21)}))
    pred_path = write_caption_predictions(tmp_path / "preds.json", {i: "a b" for i in range(8, 21)})
    missing = r"no prediction for 7 of the 20 image_ids of " + re.escape(str(refs_path))
    with pytest.raises(FormatError, match=_error(pred_path, missing + r" \(first missing: \[1, 2, 3, 4, 5\]\)")):
        score_captions(pred_path, refs_path)
    pred_path = write_caption_predictions(tmp_path / "preds.json", {i: "a b" for i in [*range(1, 21), 99, 42]})
    extra = r"2 image_ids are not in " + re.escape(str(refs_path)) + r" \(first: \[42, 99\]\)"
    with pytest.raises(FormatError, match=_error(pred_path, extra)):
        score_captions(pred_path, refs_path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.pop("annotations"), r"not a COCO caption file \(missing field 'annotations'\)"),
        (lambda o: o.update(images={}), r"not a COCO caption file \(field 'images' has type dict\)"),
        (lambda o: o["annotations"][1].pop("caption"), r"\[annotations\[1\]\]: missing field 'caption'"),
        (lambda o: o["images"][0].update(id="1"), r"\[images\[0\]\]: field 'id' has type str"),
        (lambda o: o["images"].append({"id": 1}), r"\[image 1\]: image id occurs twice"),
        (lambda o: o["annotations"][0].update(image_id=7), r"\[annotations\[0\]\]: image_id 7 is not among"),
        (lambda o: o["images"].append({"id": 3}), r"\[image 3\]: no reference caption"),
        (lambda o: o.update(images=[], annotations=[]), r"no image with a reference caption"),
    ],
)
def test_bad_caption_references(tmp_path: Path, mutate, message: str) -> None:
    obj = _coco_refs({1: ["a b"], 2: ["c d"]})
    mutate(obj)
    refs_path = _write_json(tmp_path / "refs.json", obj)
    pred_path = write_caption_predictions(tmp_path / "preds.json", {1: "a b", 2: "c d"})
    with pytest.raises(FormatError, match=_error(refs_path, message)):
        score_captions(pred_path, refs_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question_id": 11}', r"must be a JSON list"),
        ('[{"question_id": 11, "caption": "yes"}]', r"\[entry 0\]: missing field 'answer'"),
        ('[{"question_id": 11.0, "answer": "yes"}]', r"\[entry 0\]: field 'question_id' has type float"),
        ('[{"question_id": 11, "answer": "a"}, {"question_id": 11, "answer": "b"}]', r"question_id 11 occurs twice"),
    ],
)
def test_bad_vqa_predictions(tmp_path: Path, content: str, message: str) -> None:
    q, a = _vqa_files(tmp_path)
    pred_path = tmp_path / "preds.json"
    pred_path.write_text(content)
    with pytest.raises(FormatError, match=_error(pred_path, message)):
        score_vqa(pred_path, q, a)


def test_vqa_predictions_must_cover_the_benchmark(tmp_path: Path) -> None:
    q, a = _vqa_files(tmp_path)
    pred_path = write_vqa_predictions(tmp_path / "preds.json", {11: "yes", 22: "red"})
    missing = r"no prediction for 2 of the 4 question_ids of " + re.escape(str(q)) + r" \(first missing: \[12, 21\]\)"
    with pytest.raises(FormatError, match=_error(pred_path, missing)):
        score_vqa(pred_path, q, a)
    pred_path = write_vqa_predictions(tmp_path / "preds.json", {11: "a", 12: "b", 21: "c", 22: "d", 5: "e"})
    with pytest.raises(FormatError, match=_error(pred_path, r"1 question_ids are not in .* \(first: \[5\]\)")):
        score_vqa(pred_path, q, a)


@pytest.mark.parametrize(
    ("which", "mutate", "message"),
    [  # which: the file that is changed, and that the error must name
        ("q", lambda o: o.pop("questions"), r"not a VQAv2 questions file \(missing field 'questions'\)"),
        ("a", lambda o: o.update(annotations="x"), r"not a VQAv2 annotations file \(field 'annotations' has type"),
        ("q", lambda o: o["questions"][2].pop("image_id"), r"\[questions\[2\]\]: missing field 'image_id'"),
        ("q", lambda o: o["questions"].append(dict(o["questions"][0])), r"\[question 11\]: question_id occurs twice"),
        ("a", lambda o: o["annotations"].pop(1), r"\[question 12\]: no annotation with this question_id and image_id"),
        ("a", lambda o: o["annotations"][1].update(image_id=9), r"\[question 12\]: no annotation with this"),
        ("a", lambda o: o["annotations"][0].update(answers=[]), r"\[question 11\]: answers must be a non-empty list"),
        ("a", lambda o: o["annotations"][0]["answers"].append("yes"), r"\[question 11\]: answers must be"),
        ("a", lambda o: o["annotations"][3]["answers"][0].pop("answer"), r"\[question 22\]: answers must be"),
        ("a", lambda o: o["annotations"].append(dict(o["annotations"][0])), r"\[question 11\]: question_id occurs"),
        ("q", lambda o: o.update(questions=[]), r"no question to score against"),
    ],
)
def test_bad_vqa_benchmark(tmp_path: Path, which: str, mutate, message: str) -> None:
    q, a = _vqa_files(tmp_path)
    path = q if which == "q" else a
    obj = json.loads(path.read_text())
    mutate(obj)
    _write_json(path, obj)
    pred_path = write_vqa_predictions(tmp_path / "preds.json", {11: "yes", 12: "no", 21: "2", 22: "red"})
    with pytest.raises(FormatError, match=message) as error:
        score_vqa(pred_path, q, a)
    assert str(path) in str(error.value)
