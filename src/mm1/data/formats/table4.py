"""MM1 Table 4's multiple-choice benchmarks in their official file formats.

    scienceqa   problems.json {pid: {"question", "choices", "answer": index, "hint", "image": name|null,
                "subject", ...}} + pid_splits.json {"test": [pid, ...]} + images/<split>/<pid>/<image>;
                ScienceQA-IMG = the split's problems that have an image
    mmmu        HF parquet (one file, or a folder of them): id, question, options (a Python list
                literal), answer (a letter; free text for question_type "open"), question_type,
                image_1..image_7 ({bytes, path} structs); or a JSON/jsonl list of the same records
                whose image_k are paths relative to the file's folder
    mmbench     TSV: index, question, hint, A, B, C, D (E...), answer, category, image (base64)
    seed_bench  SEED-Bench.json {"question_type": {name: id}, "questions": [{"question_id",
                "question", "choice_a".."choice_d", "answer": letter, "data_id", "data_type",
                "question_type_id"}]} + SEED-Bench-image/<data_id>; only data_type "image"

Every reader is strict: a benchmark that lost a question would change its score, so the first bad
record raises FormatError naming the file, the record and the field. Yes/no and MathVista readers
are in :mod:`mm1.data.formats.table4_yesno`.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mm1.data.formats._common import FormatError, check_fields, image_problem, load_json, read_image_file

LETTERS = "ABCDEFGHIJ"
"""Option letters, in order (MMMU has up to 9 options)."""
CIRCULAR_STRIDE = 1_000_000
"""MMBench TSVs that hold the circular copies give copy r of question i the index i + r * 1e6
(VLMEvalKit's convention, read from its code; the TSVs we could read do not document it)."""


@dataclass(frozen=True)
class Table4Item:
    """One question of a Table 4 benchmark."""

    key: str
    """The benchmark's own id (pid, question_id, index...), as its official result files name it."""
    image: bytes | None
    question: str
    choices: tuple[str, ...] = ()
    """The options (multiple choice), in their official order; empty for free-form answers."""
    answer: str = ""
    """The correct option's letter (multiple choice), "yes"/"no", or MathVista's answer string."""
    context: str = ""
    """Text shown with the question (ScienceQA and MMBench hints)."""
    category: str = ""
    """What per-category accuracy is reported by (subject, question type, MME subtask...)."""
    group: str = ""
    """Items scored together: MMBench's circular copies, MME's two questions of one image."""
    meta: dict = field(default_factory=dict)
    """Format-specific fields the official score needs (MathVista: question_type, answer_type,
    precision; MMMU: question_type)."""


def _bad(path: Path, key: object, reason: str) -> FormatError:
    return FormatError(f"{path} [{key}]: {reason}")


def _image(path: Path, key: object, root: Path, rel: str) -> bytes:
    data, problem = read_image_file(root, rel)
    if problem:
        raise _bad(path, key, problem)
    return data


def _checked(path: Path, key: object, obj: object, fields: dict) -> dict:
    problem = check_fields(obj, fields)
    if problem:
        raise _bad(path, key, problem)
    return obj


# --- ScienceQA ---------------------------------------------------------------------------------


def read_scienceqa(
    problems_path: Path, pid_splits: Path | None = None, image_root: Path | None = None, split: str = "test"
) -> list[Table4Item]:
    """ScienceQA-IMG: the problems of ``split`` that have an image, answers as letters."""
    problems_path = Path(problems_path)
    pid_splits = Path(pid_splits) if pid_splits is not None else problems_path.with_name("pid_splits.json")
    root = (Path(image_root) if image_root is not None else problems_path.parent / "images") / split
    problems, splits = load_json(problems_path), load_json(pid_splits)
    if not isinstance(problems, dict):
        raise FormatError(f"{problems_path}: expected a JSON object {{pid: problem}}")
    if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
        raise FormatError(f"{pid_splits}: no list of pids for split {split!r} (has {sorted(splits)[:8]})")
    out = []
    for pid in splits[split]:
        if pid not in problems:
            raise _bad(pid_splits, pid, f"pid is not in {problems_path.name}")
        p = _checked(problems_path, pid, problems[pid], {"question": str, "choices": list, "answer": int})
        if not p.get("image"):
            continue  # ScienceQA-IMG: questions with an image context only
        if not 0 <= p["answer"] < len(p["choices"]) <= len(LETTERS):
            raise _bad(problems_path, pid, f"field 'answer' {p['answer']} is not an index of its choices")
        out.append(
            Table4Item(key=str(pid), image=_image(problems_path, pid, root / str(pid), p["image"]),
                       question=p["question"], choices=tuple(map(str, p["choices"])), answer=LETTERS[p["answer"]],
                       context=str(p.get("hint") or ""), category=str(p.get("subject", "")))
        )  # fmt: skip
    return out


# --- MMMU --------------------------------------------------------------------------------------


def _mmmu_records(path: Path) -> list[dict]:
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise FormatError(f"{path}: a folder with no *.parquet file (MMMU's validation-*.parquet)")
        return [r for f in files for r in _mmmu_records(f)]
    if path.suffix == ".parquet":
        try:
            return pl.read_parquet(path).to_dicts()
        except Exception as e:  # polars raises its own ComputeError / OSError kinds
            raise FormatError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e
    if path.suffix == ".jsonl":
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}: not valid JSON lines ({e})") from e
    records = load_json(path)
    if not isinstance(records, list):
        raise FormatError(f"{path}: expected a JSON list of MMMU records")
    return records


def _mmmu_images(path: Path, key: str, rec: dict) -> list[bytes]:
    images = []
    for k in range(1, 8):
        value = rec.get(f"image_{k}")
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(value.get("bytes"), bytes):
            data = value["bytes"]
            problem = image_problem(data)
            if problem:
                raise _bad(path, key, f"image_{k}: {problem}")
            images.append(data)
        elif isinstance(value, str):
            images.append(_image(path, key, path.parent, value))
        else:
            raise _bad(path, key, f"field 'image_{k}' is neither a {{bytes, path}} struct nor a path")
    return images


def read_mmmu(path: Path) -> list[Table4Item]:
    """MMMU questions (multiple-choice and open); ``meta["images"]`` counts each question's images,
    ``image`` is the first of them."""
    path = Path(path)
    out = []
    for i, rec in enumerate(_mmmu_records(path)):
        key = rec.get("id", f"record {i}") if isinstance(rec, dict) else f"record {i}"
        rec = _checked(path, key, rec, {"id": str, "question": str, "options": (str, list), "answer": str})
        kind = str(rec.get("question_type") or "multiple-choice")
        options = rec["options"]
        if isinstance(options, str):
            try:
                options = ast.literal_eval(options)  # the parquet stores the list as a Python literal
            except (ValueError, SyntaxError) as e:
                raise _bad(path, key, f"field 'options' is not a list literal ({e})") from None
        if not isinstance(options, list) or len(options) > len(LETTERS):
            raise _bad(path, key, f"field 'options' must be a list of at most {len(LETTERS)} options")
        if kind == "multiple-choice" and rec["answer"] not in LETTERS[: len(options)]:
            raise _bad(path, key, f"field 'answer' {rec['answer']!r} is not a letter of its {len(options)} options")
        images = _mmmu_images(path, key, rec)
        parts = key.split("_")  # "validation_Art_Theory_12" -> subject "Art_Theory"
        out.append(
            Table4Item(key=key, image=images[0] if images else None, question=rec["question"],
                       choices=tuple(map(str, options)) if kind == "multiple-choice" else (), answer=rec["answer"],
                       category="_".join(parts[1:-1]) if len(parts) > 2 else "",
                       meta={"question_type": kind, "images": len(images), "options": tuple(map(str, options))})
        )  # fmt: skip
    return out


# --- MMBench -----------------------------------------------------------------------------------


def _blank(value: str | None) -> bool:
    return value is None or value.strip() in ("", "nan", "NaN")  # pandas writes missing cells as "" or nan


def read_mmbench(path: Path) -> list[Table4Item]:
    """MMBench with its circular copies: rows whose index is >= 1e6 are copies of ``index % 1e6``;
    a TSV without copies gets them here (each rotation of the options, the answer moved with it),
    so every question has one item per option, all with ``group`` = the question's index."""
    path = Path(path)
    csv.field_size_limit(sys.maxsize)  # base64 images are longer than csv's 128 kB default
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (UnicodeDecodeError, csv.Error) as e:
        raise FormatError(f"{path}: not a UTF-8 TSV ({e})") from e
    need = ("index", "question", "A", "B", "answer", "image")
    missing = [c for c in need if rows and c not in rows[0]]
    if not rows or missing:
        raise FormatError(f"{path}: an MMBench TSV needs columns {list(need)}; missing {missing or 'all rows'}")
    by_index = {r["index"]: r for r in rows}
    items = [_mmbench_item(path, r, by_index) for r in rows]
    if all(int(it.key) < CIRCULAR_STRIDE for it in items):  # no copies in the file: make the rotations
        items = [rot for it in items for rot in _rotations(it)]
    return items


def _mmbench_item(path: Path, row: dict, by_index: dict) -> Table4Item:
    key = row["index"]
    if not re.fullmatch(r"\d+", key or ""):
        raise _bad(path, key, "field 'index' is not an integer")
    letters = [c for c in LETTERS if c in row and not _blank(row[c])]
    if letters != list(LETTERS[: len(letters)]) or len(letters) < 2:
        raise _bad(path, key, f"options must be A, B, ... without gaps, got {letters}")
    if row["answer"] not in letters:
        raise _bad(path, key, f"field 'answer' {row['answer']!r} is not one of its options {letters}")
    encoded = row["image"]
    if re.fullmatch(r"\d+", encoded or "") and encoded in by_index:  # VLMEvalKit: a copy points at the row with it
        encoded = by_index[encoded]["image"]
    try:
        image = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad(path, key, f"field 'image' is not base64 ({e})") from None
    problem = image_problem(image)
    if problem:
        raise _bad(path, key, f"field 'image': {problem}")
    return Table4Item(key=key, image=image, question=row["question"], choices=tuple(row[c] for c in letters),
                      answer=row["answer"], context="" if _blank(row.get("hint")) else row["hint"],
                      category=row.get("category", ""), group=str(int(key) % CIRCULAR_STRIDE))  # fmt: skip


def _rotations(item: Table4Item) -> list[Table4Item]:
    """Copy r shows option (i + r) mod N as letter i: every option takes every position once."""
    n, right = len(item.choices), LETTERS.index(item.answer)
    out = []
    for r in range(n):
        choices = tuple(item.choices[(i + r) % n] for i in range(n))
        out.append(Table4Item(key=str(int(item.key) + r * CIRCULAR_STRIDE), image=item.image, question=item.question,
                              choices=choices, answer=LETTERS[(right - r) % n], context=item.context,
                              category=item.category, group=item.group))  # fmt: skip
    return out


# --- SEED-Bench --------------------------------------------------------------------------------

_SEED = {"question_id": (str, int), "question": str, "answer": str, "data_id": str, "data_type": str}


def read_seed_bench(path: Path, image_root: Path | None = None) -> list[Table4Item]:
    """SEED-Bench's image questions (data_type "image"), by question type."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent / "SEED-Bench-image"
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise FormatError(f"{path}: expected {{'question_type': {{...}}, 'questions': [...]}}")
    names = {v: k for k, v in (data.get("question_type") or {}).items()}
    out = []
    for i, q in enumerate(data["questions"]):
        key = q.get("question_id", f"question {i}") if isinstance(q, dict) else f"question {i}"
        q = _checked(path, key, q, _SEED | {f"choice_{c}": str for c in "abcd"})
        if q["data_type"] != "image":
            continue  # SEED-Bench's video questions are out of MM1's scope
        if q["answer"] not in "ABCD" or len(q["answer"]) != 1:
            raise _bad(path, key, f"field 'answer' {q['answer']!r} is not A-D")
        out.append(
            Table4Item(key=str(key), image=_image(path, key, root, q["data_id"]), question=q["question"],
                       choices=tuple(q[f"choice_{c}"] for c in "abcd"), answer=q["answer"],
                       category=str(names.get(q.get("question_type_id"), q.get("question_type_id", ""))))
        )  # fmt: skip
    return out
