"""Readers of the official files of MM1's Table 3 benchmarks that are not in COCO / VQAv2 layout.

Each gives the same :class:`Item` objects the COCO and VQAv2 readers give, so prompts, demonstrations
and scoring need no conversion step. The layouts, as the benchmarks release them:

    textvqa   TextVQA_0.5.1_val.json    {"dataset_name", "dataset_version", "dataset_type", "data": [{"question",
                                        "question_id": int, "image_id": str, "answers": [10 str], ...}]}
                                        images: train_images/<image_id>.jpg (train_val_images.zip)
    vizwiz    annotations/val.json      [{"image": "VizWiz_val_00000000.jpg", "question", "answers": [{"answer",
                                        "answer_confidence"}] x 10, "answer_type", "answerable"}]; images: val/
    gqa       val_balanced_questions.json  {"<questionId>": {"imageId", "question", "answer", "fullAnswer",
                                        "types": {"structural", "semantic", "detailed"}, ...}}; images/<imageId>.jpg
    textcaps  TextCaps_0.1_val.json     {"data": [{"image_id": str, "caption_str", "reference_strs", ...}]}, one
                                        entry per caption; images: train_images/<image_id>.jpg (TextVQA's)
    nocaps    nocaps_val_4500_captions.json  COCO caption layout whose "images" carry "domain": "in-domain" |
                                        "near-domain" | "out-domain"; images: the file_name of each, in images/

Keys (``Item.key``, the ids of the prediction files): TextVQA's ``question_id``; VizWiz: the number in the
image's file name (one question per image); GQA: the question id as an integer (GQA's ids are digit
strings); TextCaps: the image's position in the file (its ids are hex strings); NoCaps: the image ``id``.
String image ids become ``Item.image_id`` = their order of first appearance. Any missing or malformed
field, or image, raises FormatError naming the file and the entry. Given no image folder (None), a
reader reads the JSON alone and every ``Item.image`` is empty: what scoring a predictions file needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from mm1.data.formats import read_coco_captions
from mm1.data.formats._common import FormatError, check_fields, load_json, read_image_file
from mm1.data.formats.coco import read_coco_references
from mm1.eval.prompts import Example

NOCAPS_DOMAINS: tuple[str, ...] = ("in-domain", "near-domain", "out-domain")
"""NoCaps' image domains (how close an image's objects are to COCO's), each reported apart."""


@dataclass(frozen=True)
class Item:
    """One evaluated example: ``key`` is the image id (captioning) or question id (vqa)."""

    key: int
    image_id: int
    image: bytes
    question: str | None
    targets: tuple[str, ...]
    """Reference captions, or the human answers (GQA: its one answer)."""
    answer_type: str = "other"
    question_type: str = ""
    """VQA: the question's kind (VQAv2's question_type; GQA's detailed type; the world writes the kind
    of question)."""
    domain: str = ""
    """NoCaps: the image's domain (in-domain, near-domain, out-domain); empty elsewhere."""

    def example(self) -> Example:
        return Example(self.image, {} if self.question is None else {"question": self.question})


class _Images:
    """Image bytes by file name under one folder, each file read and checked once; with no folder
    (``root`` None: scoring a predictions file) no image is read and every image is ``b""``."""

    def __init__(self, root: Path | None, source: Path) -> None:
        self.root, self.source, self.cache = root, source, {}

    def get(self, file_name: str, where: str) -> bytes:
        if self.root is None:
            return b""
        if file_name not in self.cache:
            data, problem = read_image_file(self.root, file_name)
            if problem and not self.root.is_dir():
                problem = f"image folder {self.root} does not exist (set the benchmark's val_images / train_images)"
            if problem:
                raise FormatError(f"{self.source}: {where}: {problem}")
            self.cache[file_name] = data
        return self.cache[file_name]


def _fail(path: Path, where: str, problem: str) -> NoReturn:
    raise FormatError(f"{path}: {where}: {problem}")


def _data_list(path: Path, what: str) -> list:
    obj = load_json(path)
    if problem := check_fields(obj, {"data": list}):
        raise FormatError(f"{path}: not a {what} file ({problem})")
    return obj["data"]


def _str_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def read_textvqa(path: Path, images: Path | None) -> list[Item]:
    """TextVQA 0.5.1 (module docstring): one item per question, its 10 human answers."""
    pictures, ordinal, items = _Images(images, path), {}, []
    for i, e in enumerate(_data_list(path, "TextVQA")):
        where = f"data[{i}]"
        if problem := check_fields(e, {"question": str, "question_id": int, "image_id": str, "answers": list}):
            _fail(path, where, problem)
        if not _str_list(e["answers"]):
            _fail(path, where, "field 'answers' must be a non-empty list of strings")
        image = pictures.get(f"{e['image_id']}.jpg", f"{where} (question {e['question_id']})")
        items.append(Item(key=e["question_id"], image_id=ordinal.setdefault(e["image_id"], len(ordinal)),
                          image=image, question=e["question"], targets=tuple(e["answers"])))  # fmt: skip
    return _unique(items, path, "question_id")


_TRAILING_NUMBER = re.compile(r"([0-9]+)$")


def read_vizwiz(path: Path, images: Path | None) -> list[Item]:
    """VizWiz VQA (module docstring): one item per image's question, its human answers."""
    entries = load_json(path)
    if not isinstance(entries, list):
        raise FormatError(f"{path}: not a VizWiz annotations file (expected a JSON list, got {type(entries).__name__})")
    pictures, items = _Images(images, path), []
    for i, e in enumerate(entries):
        where = f"[{i}]"
        if problem := check_fields(e, {"image": str, "question": str, "answers": list}):
            _fail(path, where, problem)
        answers = [a.get("answer") if isinstance(a, dict) else None for a in e["answers"]]
        if not _str_list(answers):
            _fail(path, where, "field 'answers' must be a non-empty list of {answer: str}")
        number = _TRAILING_NUMBER.search(Path(e["image"]).stem)
        if number is None:
            _fail(path, where, f"image name {e['image']!r} does not end in a number (VizWiz_val_00000042.jpg)")
        items.append(Item(key=int(number[1]), image_id=int(number[1]), image=pictures.get(e["image"], where),
                          question=e["question"], targets=tuple(answers),
                          answer_type=str(e.get("answer_type", "other"))))  # fmt: skip
    return _unique(items, path, "image number")


def read_gqa(path: Path, images: Path | None) -> list[Item]:
    """GQA questions (module docstring): one item per question, its one answer; ``answer_type`` is the
    structural type (query, verify, logical, choose, compare), ``question_type`` the detailed one."""
    questions = load_json(path)
    if not isinstance(questions, dict):
        raise FormatError(f"{path}: not a GQA questions file (expected {{questionId: question}}, "
                          f"got {type(questions).__name__})")  # fmt: skip
    pictures, ordinal, items = _Images(images, path), {}, []
    for qid, q in questions.items():
        where = f"question {qid!r}"
        if not (qid.isascii() and qid.isdigit()):
            _fail(path, where, "GQA question ids are digit strings")
        if problem := check_fields(q, {"imageId": str, "question": str, "answer": str}):
            _fail(path, where, problem)
        types = q.get("types") if isinstance(q.get("types"), dict) else {}
        items.append(Item(key=int(qid), image_id=ordinal.setdefault(q["imageId"], len(ordinal)),
                          image=pictures.get(f"{q['imageId']}.jpg", where), question=q["question"],
                          targets=(q["answer"],), answer_type=str(types.get("structural", "other")),
                          question_type=str(types.get("detailed", ""))))  # fmt: skip
    return _unique(items, path, "question id")


def read_textcaps(path: Path, images: Path | None) -> list[Item]:
    """TextCaps 0.1 (module docstring): one item per image, the captions of its entries as references."""
    captions: dict[str, list[str]] = {}
    for i, e in enumerate(_data_list(path, "TextCaps")):
        if problem := check_fields(e, {"image_id": str, "caption_str": str}):
            _fail(path, f"data[{i}]", problem)
        captions.setdefault(e["image_id"], []).append(e["caption_str"])
    pictures = _Images(images, path)
    return [
        Item(key=n, image_id=n, image=pictures.get(f"{image_id}.jpg", f"image {image_id!r}"), question=None,
             targets=tuple(refs))
        for n, (image_id, refs) in enumerate(captions.items())
    ]  # fmt: skip


def read_nocaps(path: Path, images: Path | None) -> list[Item]:
    """NoCaps (module docstring): the COCO caption reader's items, each with its image's domain."""
    obj = load_json(path)
    if problem := check_fields(obj, {"images": list}):
        raise FormatError(f"{path}: not a NoCaps captions file ({problem})")
    domains = {}
    for i, entry in enumerate(obj["images"]):
        if problem := check_fields(entry, {"id": int, "domain": str}):
            _fail(path, f"images[{i}]", problem)
        if entry["domain"] not in NOCAPS_DOMAINS:
            _fail(path, f"images[{i}]", f"domain {entry['domain']!r} is not one of {list(NOCAPS_DOMAINS)}")
        domains[entry["id"]] = entry["domain"]
    if images is None:  # scoring: the references alone
        references, pictures = read_coco_references(path), {}
    else:
        bench = read_coco_captions(path, images)
        references, pictures = bench.references, bench.images
    return [
        Item(key=i, image_id=i, image=pictures.get(i, b""), question=None, targets=tuple(references[i]),
             domain=domains[i])
        for i in sorted(references)
    ]  # fmt: skip


def _unique(items: list[Item], path: Path, what: str) -> list[Item]:
    seen: set[int] = set()
    for it in items:
        if it.key in seen:
            raise FormatError(f"{path}: {what} {it.key} occurs twice")
        seen.add(it.key)
    return sorted(items, key=lambda it: it.key)


READERS = {"textvqa": read_textvqa, "vizwiz": read_vizwiz, "gqa": read_gqa, "textcaps": read_textcaps,
           "nocaps": read_nocaps}  # fmt: skip
"""format -> reader(JSON path, image folder or None: no image read) of the formats this module reads."""

DEFAULT_IMAGES: dict[str, tuple[str, ...]] = {
    "textvqa": ("train_images",),
    "textcaps": ("train_images",),
    "nocaps": ("images",),
    "gqa": ("images", "../images"),
    "vizwiz": ("{stem}", "../{stem}"),
}
"""Each format's image folder when ``val_images`` / ``train_images`` is not set, relative to the JSON's
folder, the first that exists ({stem}: the JSON's name without .json, VizWiz's val.json -> val/)."""


def default_images(fmt: str, path: Path) -> Path:
    """The image folder of ``path`` (format ``fmt``) by :data:`DEFAULT_IMAGES`; the first candidate when
    none exists (the reader then names the missing image)."""
    candidates = [path.parent / c.format(stem=path.stem) for c in DEFAULT_IMAGES[fmt]]
    return next((c for c in candidates if c.is_dir()), candidates[0])
