"""VQA benchmarks in VQAv2 format: a questions JSON, an annotations JSON and a folder of images.

    out_dir/{name}_{split}_questions.json    {"info", "task_type", "data_type": name,
                                              "data_subtype": split, "questions": [{"image_id",
                                              "question", "question_id"}]}
    out_dir/{name}_{split}_annotations.json  {"annotations": [{"question_id", "image_id",
                                              "question_type", "answer_type", "multiple_choice_answer",
                                              "answers": [{"answer", "answer_confidence", "answer_id"}]}]}
    out_dir/images/{split}/{image_id:012d}.png

``multiple_choice_answer`` is the most frequent answer (the first one given, among ties). The
reader finds image ``i`` as the file whose name stem ends in ``{i:012d}`` (so COCO's
``COCO_val2014_000000000042.jpg`` works too) and keeps the images that questions refer to.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from mm1.atomic import write_bytes
from mm1.data.formats._common import (
    FormatError,
    Sink,
    check_fields,
    check_name,
    dump_json,
    image_problem,
    load_json,
    write_image,
)
from mm1.data.quarantine import Quarantine
from mm1.data.records import VQABenchmark, VQAItem

_STEM_ID = re.compile(r"(\d{12})$")
_QUESTION = {"image_id": int, "question": str, "question_id": int}
_ANNOTATION = {"question_id": int, "image_id": int, "answers": list}


def write_vqa(bench: VQABenchmark, out_dir: Path) -> tuple[Path, Path]:
    """Write the images and the two JSON files; return (questions path, annotations path)."""
    check_name("name", bench.name)
    check_name("split", bench.split)
    out_dir = Path(out_dir)
    for image_id in sorted(bench.images):
        write_image(out_dir / "images" / bench.split, f"{image_id:012d}", bench.images[image_id])
    questions, annotations = [], []
    for item in bench.items:
        if item.image_id not in bench.images:
            raise ValueError(f"{bench.name}/{bench.split}: question {item.question_id} refers to missing image")
        if not item.answers:
            raise ValueError(f"{bench.name}/{bench.split}: question {item.question_id} has no answer")
        questions.append({"image_id": item.image_id, "question": item.question, "question_id": item.question_id})
        answers = [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(item.answers)]
        annotations.append(
            {
                "question_id": item.question_id,
                "image_id": item.image_id,
                "question_type": item.question_type,
                "answer_type": item.answer_type,
                "multiple_choice_answer": Counter(item.answers).most_common(1)[0][0],
                "answers": answers,
            }
        )
    head = {"info": {"description": f"{bench.name} {bench.split}", "version": "2.0"}, "license": {}}
    head |= {"data_type": bench.name, "data_subtype": bench.split}
    stem = out_dir / f"{bench.name}_{bench.split}"
    q = write_bytes(
        Path(f"{stem}_questions.json"), dump_json({**head, "task_type": "Open-Ended", "questions": questions})
    )
    a = write_bytes(Path(f"{stem}_annotations.json"), dump_json({**head, "annotations": annotations}))
    return q, a


def read_vqa(
    questions_path: Path,
    annotations_path: Path | None = None,
    image_root: Path | None = None,
    quarantine: Quarantine | None = None,
    source: str | None = None,
) -> VQABenchmark:
    """Read a VQAv2 split. ``annotations_path`` defaults to the questions file with ``_questions``
    replaced by ``_annotations``, ``image_root`` to ``images/{split}`` beside it. Without a quarantine
    (the default) any bad question raises FormatError; with one, bad questions are recorded and left out."""
    questions_path = Path(questions_path)
    if annotations_path is None:
        annotations_path = questions_path.with_name(questions_path.name.replace("_questions", "_annotations"))
    sink = Sink(quarantine, source, questions_path)
    qs = _load(questions_path, "questions")
    name, split = str(qs.get("data_type", questions_path.stem)), str(qs.get("data_subtype", ""))
    root = Path(image_root) if image_root is not None else questions_path.parent / "images" / split
    files = _image_files(root)
    annotations = {}
    ann_sink = Sink(quarantine, sink.source, Path(annotations_path))
    for ann in _entries(_load(Path(annotations_path), "annotations"), "annotations", _ANNOTATION, ann_sink):
        annotations[ann["question_id"]] = ann
    images: dict[int, bytes] = {}
    problems: dict[int, str] = {}
    items = []
    for q in _entries(qs, "questions", _QUESTION, sink):
        key, ann = f"question {q['question_id']}", annotations.get(q["question_id"])
        if ann is None or ann["image_id"] != q["image_id"]:
            sink.reject(key, "no annotation with this question_id and image_id")
            continue
        answers = [a.get("answer") if isinstance(a, dict) else None for a in ann["answers"]]
        if not answers or not all(isinstance(a, str) for a in answers):
            sink.reject(key, "answers must be a non-empty list of {answer: str}")
            continue
        image_id = q["image_id"]
        if image_id not in images and image_id not in problems:
            data = files[image_id].read_bytes() if image_id in files else None
            problem = image_problem(data) if data is not None else f"no image file for image {image_id} in {root}"
            if problem:
                problems[image_id] = problem
            else:
                images[image_id] = data
        if image_id in problems:
            sink.reject(key, problems[image_id])
            continue
        items.append(
            VQAItem(
                question_id=q["question_id"],
                image_id=image_id,
                question=q["question"],
                answers=tuple(answers),
                answer_type=str(ann.get("answer_type", "other")),
                question_type=str(ann.get("question_type", "")),
            )
        )
        sink.accept()
    return VQABenchmark(name=name, split=split, images=images, items=items)


def read_vqa_answers(questions_path: Path, annotations_path: Path) -> dict[int, VQAItem]:
    """question_id -> VQAItem for the questions of ``questions_path``, in its order, from the two JSON
    files alone (no image is read). Strict: a bad entry, a question_id that occurs twice, or a
    question without an annotation (same question_id and image_id) holding a non-empty list of
    string answers raises FormatError. Annotations of other questions are ignored."""
    questions_path, annotations_path = Path(questions_path), Path(annotations_path)
    # Strict sinks: every reject() raises, so the code after one only sees good entries.
    q_sink, a_sink = Sink(None, None, questions_path), Sink(None, None, annotations_path)
    annotations: dict[int, dict] = {}
    for ann in _entries(_load(annotations_path, "annotations"), "annotations", _ANNOTATION, a_sink):
        if ann["question_id"] in annotations:
            a_sink.reject(f"question {ann['question_id']}", "question_id occurs twice")
        annotations[ann["question_id"]] = ann
    items: dict[int, VQAItem] = {}
    for q in _entries(_load(questions_path, "questions"), "questions", _QUESTION, q_sink):
        key, ann = f"question {q['question_id']}", annotations.get(q["question_id"])
        if q["question_id"] in items:
            q_sink.reject(key, "question_id occurs twice")
        elif ann is None or ann["image_id"] != q["image_id"]:
            q_sink.reject(key, f"no annotation with this question_id and image_id in {annotations_path}")
        answers = [a.get("answer") if isinstance(a, dict) else None for a in ann["answers"]]
        if not answers or not all(isinstance(a, str) for a in answers):
            a_sink.reject(key, "answers must be a non-empty list of {answer: str}")
        items[q["question_id"]] = VQAItem(
            question_id=q["question_id"],
            image_id=q["image_id"],
            question=q["question"],
            answers=tuple(answers),
            answer_type=str(ann.get("answer_type", "other")),
            question_type=str(ann.get("question_type", "")),
        )
    return items


def count_vqa(json_path: Path, quarantine: Quarantine, source: str | None = None) -> int:
    """Check one VQAv2 file alone (questions or annotations; images not read) and count its entries."""
    json_path = Path(json_path)
    sink = Sink(quarantine, source, json_path)
    obj = load_json(json_path)
    if isinstance(obj, dict) and "questions" in obj:
        n = sum(1 for _ in _entries(obj, "questions", _QUESTION, sink))
    else:
        n = sum(1 for _ in _entries(_load(json_path, "annotations"), "annotations", _ANNOTATION, sink))
    quarantine.accept(sink.source, n)
    return n


def _load(path: Path, field: str) -> dict:
    obj = load_json(path)
    if problem := check_fields(obj, {field: list}):
        raise FormatError(f"{path}: not a VQAv2 {field} file ({problem})")
    return obj


def _entries(obj: dict, field: str, fields: dict, sink: Sink):
    for i, entry in enumerate(obj[field]):
        if problem := check_fields(entry, fields):
            sink.reject(f"{field}[{i}]", problem)
        else:
            yield entry


def _image_files(root: Path) -> dict[int, Path]:
    """image_id -> file, for the files of ``root`` whose name stem ends in 12 digits."""
    if not root.is_dir():
        return {}
    out = {}
    with os.scandir(root) as it:
        for e in it:
            match = _STEM_ID.search(Path(e.name).stem)
            if match and e.is_file():
                out[int(match[1])] = Path(e.path)
    return out
