"""MM1 Table 4's yes/no benchmarks (POPE, MME) and MathVista in their official file formats.

    pope       jsonl, one question a line: {"question_id", "image", "text", "label": "yes"|"no"},
               images (COCO val2014) in a folder (default: the file's folder)
    mme        MME_Benchmark_release_version/<subtask>/: either <name>.jpg|png beside <name>.txt,
               or images/<name>.* and questions_answers_YN/<name>.txt; each txt holds the image's two
               "question<TAB>answer" lines, answer Yes or No (the layout LLaVA's
               convert_answer_to_mme.py reads)
    mathvista  testmini.json {pid: {"question", "image": "images/<pid>.jpg", "choices": list|null,
               "answer": str, "question_type": "multi_choice"|"free_form", "answer_type":
               "text"|"integer"|"float"|"list", "precision": number|null, "unit", "query",
               "metadata": {"task", ...}}}, image paths relative to the file's folder

Strict like :mod:`mm1.data.formats.table4`: the first bad record raises FormatError naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

from mm1.data.formats._common import FormatError, load_json
from mm1.data.formats.table4 import Table4Item, _bad, _checked, _image

MME_PERCEPTION: tuple[str, ...] = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
"""MME's perception subtasks (their scores add up to MME^P, the number MM1's Table 4 reports)."""
MME_COGNITION: tuple[str, ...] = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)
"""MME's cognition subtasks (MME^C)."""
_IMAGE_EXTS = (".jpg", ".png", ".jpeg")


def read_pope(path: Path, image_root: Path | None = None) -> list[Table4Item]:
    """POPE's questions; ``category`` is the file's stem (e.g. coco_pope_adversarial)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: cannot be read as UTF-8 jsonl ({e})") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _bad(path, f"line {n}", f"not valid JSON ({e})") from None
        key = obj.get("question_id", f"line {n}") if isinstance(obj, dict) else f"line {n}"
        obj = _checked(path, key, obj, {"question_id": (int, str), "image": str, "text": str, "label": str})
        label = obj["label"].strip().lower()
        if label not in ("yes", "no"):
            raise _bad(path, key, f"field 'label' {obj['label']!r} is not yes or no")
        out.append(Table4Item(key=str(key), image=_image(path, key, root, obj["image"]), question=obj["text"],
                              answer=label, category=path.stem))  # fmt: skip
    return out


def _mme_image(folder: Path, stem: str) -> Path | None:
    found = [folder / f"{stem}{ext}" for ext in _IMAGE_EXTS if (folder / f"{stem}{ext}").is_file()]
    return found[0] if found else None


def read_mme(root: Path) -> list[Table4Item]:
    """MME's questions, two per image: ``category`` the subtask, ``group`` "<subtask>/<image name>"."""
    root = Path(root)
    if not root.is_dir():
        raise FormatError(f"{root}: MME is read from the MME_Benchmark_release_version folder; this is not one")
    tasks = sorted(p for p in root.iterdir() if p.is_dir() and p.name in MME_PERCEPTION + MME_COGNITION)
    if not tasks:
        raise FormatError(f"{root}: no MME subtask folder (expected some of {list(MME_PERCEPTION + MME_COGNITION)})")
    out = []
    for task in tasks:
        nested = (task / "images").is_dir()
        images, qa = (task / "images", task / "questions_answers_YN") if nested else (task, task)
        for txt in sorted(qa.glob("*.txt")):
            picture = _mme_image(images, txt.stem)
            if picture is None:
                raise _bad(txt, txt.stem, f"no image {txt.stem}.jpg/.png in {images}")
            data = _image(txt, txt.stem, images, picture.name)
            lines = [ln for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if len(lines) != 2:
                raise _bad(txt, txt.stem, f"MME asks 2 questions per image, this file has {len(lines)} lines")
            for n, line in enumerate(lines):
                question, sep, answer = line.rstrip("\r").rpartition("\t")
                if not sep or answer.strip().lower() not in ("yes", "no"):
                    raise _bad(txt, f"line {n + 1}", "expected 'question<TAB>Yes' or 'question<TAB>No'")
                out.append(Table4Item(key=f"{task.name}/{picture.name}/{n}", image=data, question=question,
                                      answer=answer.strip().lower(), category=task.name,
                                      group=f"{task.name}/{picture.name}"))  # fmt: skip
    return out


_MATHVISTA = {"question": str, "image": str, "answer": str, "question_type": str, "answer_type": str}


def read_mathvista(path: Path, image_root: Path | None = None) -> list[Table4Item]:
    """MathVista problems (testmini.json); ``meta`` holds what its score needs."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    data = load_json(path)
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a JSON object {{pid: problem}} (MathVista's testmini.json)")
    out = []
    for pid, p in data.items():
        p = _checked(path, pid, p, _MATHVISTA)
        kind, answer_type = p["question_type"], p["answer_type"]
        choices = p.get("choices") or []
        if kind not in ("multi_choice", "free_form") or answer_type not in ("text", "integer", "float", "list"):
            raise _bad(path, pid, f"unknown question_type {kind!r} / answer_type {answer_type!r}")
        if kind == "multi_choice" and p["answer"] not in choices:
            raise _bad(path, pid, "field 'answer' is not one of its 'choices'")
        precision = p.get("precision")
        if answer_type == "float" and not isinstance(precision, int | float):
            raise _bad(path, pid, "a float answer needs the field 'precision' (decimal places)")
        meta = {"question_type": kind, "answer_type": answer_type, "unit": p.get("unit") or "",
                "precision": int(precision) if isinstance(precision, int | float) else None,
                "query": p.get("query") or ""}  # fmt: skip
        task = (p.get("metadata") or {}).get("task", "")
        out.append(Table4Item(key=str(pid), image=_image(path, pid, root, p["image"]), question=p["question"],
                              choices=tuple(map(str, choices)), answer=p["answer"], category=str(task),
                              meta=meta))  # fmt: skip
    return out
