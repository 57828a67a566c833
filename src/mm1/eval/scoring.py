"""Score prediction files in the official result formats, so any model's outputs can be scored.

    captions  [{"image_id": int, "caption": str}, ...]     COCO caption results, scored with CIDEr-D
                                                            against a COCO captions JSON
    VQA       [{"question_id": int, "answer": str}, ...]   VQAv2 results, scored with VQA accuracy
                                                            against VQAv2 questions + annotations JSONs

    official  the val files of TextCaps / NoCaps (captions) and TextVQA / VizWiz / GQA (VQA), read by
              mm1.eval.official, with the ids ``mm1 eval run`` gives their items (score_official)

As the official tools require, there must be exactly one prediction per benchmark id: none missing,
none extra. Other fields of an entry are ignored. Only the JSON files are read, never the images.
Scores are on the paper's scale (x 100). Every problem with a file raises FormatError naming the
file and the entry or ids at fault.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mm1.atomic import write_bytes
from mm1.data.formats._common import FormatError, check_fields, dump_json, load_json
from mm1.data.formats.coco import read_coco_references
from mm1.data.formats.vqa import read_vqa_answers
from mm1.eval.cider import cider_d, resolve_tokenizer
from mm1.eval.vqa_metric import VQAReference, answer_scores, vqa_scores

_SHOWN = 5
"""How many offending ids an error message lists."""


@contextmanager
def _reading(**files: Path) -> Iterator[None]:
    """Around reading ``files`` (flag -> path): a folder, or JSON nested past Python's recursion limit,
    is a FormatError naming the file, not an IsADirectoryError or a RecursionError traceback."""
    for flag, path in files.items():
        if Path(path).is_dir():
            raise FormatError(f"--{flag} {path} is a folder, not a JSON file; give the file's path")
    try:
        yield
    except RecursionError:
        named = " or ".join(f"--{flag} {path}" for flag, path in files.items())
        raise FormatError(f"{named}: JSON nested too deeply to be a results or benchmark file") from None


def score_captions(pred_path: Path, refs_path: Path, *, tokenizer: str = "auto") -> dict[str, Any]:
    """CIDEr-D of a caption results file against a COCO captions JSON.

    Returns ``CIDEr`` (corpus CIDEr-D x 100), ``n_images``, ``per_image`` (image_id -> x 100) and
    ``tokenizer``, the PTB tokenizer used ("ptb-java" / "ptb-python"; see `mm1.eval.cider`)."""
    with _reading(refs=refs_path):
        refs = read_coco_references(refs_path)
    if not refs:
        raise FormatError(f"{refs_path}: no image with a reference caption to score against")
    with _reading(pred=pred_path):
        preds = read_caption_predictions(pred_path)
    _check_ids(pred_path, preds, refs_path, refs, "image_id")
    name = resolve_tokenizer(tokenizer)
    score, per_image = cider_d({i: preds[i] for i in refs}, refs, tokenizer=name)
    per_image = {i: 100 * s for i, s in per_image.items()}
    return {"CIDEr": 100 * score, "n_images": len(refs), "per_image": per_image, "tokenizer": name}


def score_vqa(
    pred_path: Path, questions_path: Path, annotations_path: Path, *, always_normalize: bool = False
) -> dict[str, Any]:
    """VQA accuracy of a VQA results file against a VQAv2 questions file and its annotations.

    Returns what `mm1.eval.vqa_metric.vqa_scores` does: ``accuracy`` (percent), ``per_answer_type``,
    ``per_question_type``, ``per_question`` and ``n_questions``. always_normalize=True is not the
    official metric (see `mm1.eval.vqa_metric`)."""
    with _reading(questions=questions_path, annotations=annotations_path):
        items = read_vqa_answers(questions_path, annotations_path)
    if not items:
        raise FormatError(f"{questions_path}: no question to score against")
    with _reading(pred=pred_path):
        preds = read_vqa_predictions(pred_path)
    _check_ids(pred_path, preds, questions_path, items, "question_id")
    refs = {qid: VQAReference(it.answers, it.answer_type, it.question_type) for qid, it in items.items()}
    return vqa_scores(preds, refs, always_normalize=always_normalize)


CAPTION_FORMATS = ("textcaps", "nocaps")
VQA_FORMATS = ("textvqa", "vizwiz", "gqa")


def score_official(pred_path: Path, fmt: str, val_path: Path, *, tokenizer: str = "auto") -> dict[str, Any]:
    """Score a results file against the official val file of TextCaps / NoCaps (CIDEr-D) or TextVQA /
    VizWiz (VQA accuracy) / GQA (exact match), read by :mod:`mm1.eval.official` without its images.
    The ids are the ones ``mm1 eval run`` writes (``Item.key``: see that module).

    Captioning: ``CIDEr``, ``n_images``, ``per_image``, ``tokenizer`` and, for NoCaps, ``per_domain``
    (each domain's images scored as a corpus of their own, as the NoCaps evaluation does). VQA: what
    :func:`mm1.eval.vqa_metric.answer_scores` returns."""
    from mm1.config.eval import EXACT_MATCH_FORMATS
    from mm1.eval.official import NOCAPS_DOMAINS, READERS

    if fmt not in READERS:
        raise ValueError(f"--format {fmt!r}: not an official format mm1 reads ({', '.join(READERS)})")
    with _reading(val=val_path):
        items = READERS[fmt](Path(val_path), None)
    if not items:
        raise FormatError(f"{val_path}: no example to score against")
    if fmt in VQA_FORMATS:
        with _reading(pred=pred_path):
            preds = read_vqa_predictions(pred_path)
        truth = {it.key: (it.targets, it.answer_type) for it in items}
        _check_ids(pred_path, preds, val_path, truth, "question_id")
        return answer_scores(preds, truth, "exact_match" if fmt in EXACT_MATCH_FORMATS else "vqa_accuracy")
    with _reading(pred=pred_path):
        preds = read_caption_predictions(pred_path)
    refs = {it.key: list(it.targets) for it in items}
    _check_ids(pred_path, preds, val_path, refs, "image_id")
    name = resolve_tokenizer(tokenizer)
    score, per_image = cider_d({i: preds[i] for i in refs}, refs, tokenizer=name)
    out = {"CIDEr": 100 * score, "n_images": len(refs), "per_image": {i: 100 * v for i, v in per_image.items()},
           "tokenizer": name}  # fmt: skip
    if fmt == "nocaps":
        out["per_domain"] = {}
        for domain in NOCAPS_DOMAINS:
            keys = [it.key for it in items if it.domain == domain]
            if keys:
                corpus, _ = cider_d({i: preds[i] for i in keys}, {i: refs[i] for i in keys}, tokenizer=name)
                out["per_domain"][domain] = 100 * corpus
    return out


def read_caption_predictions(path: Path) -> dict[int, str]:
    """image_id -> caption from a COCO caption results file."""
    return _read_predictions(path, "image_id", "caption")


def read_vqa_predictions(path: Path) -> dict[int, str]:
    """question_id -> answer from a VQA results file."""
    return _read_predictions(path, "question_id", "answer")


def write_caption_predictions(path: Path, captions: Mapping[int, str]) -> Path:
    """Write image_id -> caption as a COCO caption results file, sorted by image_id, atomically."""
    return _write_predictions(path, captions, "image_id", "caption")


def write_vqa_predictions(path: Path, answers: Mapping[int, str]) -> Path:
    """Write question_id -> answer as a VQA results file, sorted by question_id, atomically."""
    return _write_predictions(path, answers, "question_id", "answer")


def _read_predictions(path: Path, id_field: str, text_field: str) -> dict[int, str]:
    path = Path(path)
    entries = load_json(path)
    if not isinstance(entries, list):
        raise FormatError(
            f"{path}: a results file must be a JSON list of {{{id_field!r}: int, {text_field!r}: str}} "
            f"objects, got a JSON {type(entries).__name__}"
        )
    preds: dict[int, str] = {}
    first_entry: dict[int, int] = {}
    for i, entry in enumerate(entries):
        if problem := check_fields(entry, {id_field: int, text_field: str}):
            raise FormatError(f"{path} [entry {i}]: {problem}")
        key = entry[id_field]
        if key in preds:
            raise FormatError(f"{path} [entry {i}]: {id_field} {key} occurs twice (entries {first_entry[key]} and {i})")
        preds[key], first_entry[key] = entry[text_field], i
    return preds


def _write_predictions(path: Path, texts: Mapping[int, str], id_field: str, text_field: str) -> Path:
    for key, text in texts.items():
        if not isinstance(key, int) or isinstance(key, bool):
            raise ValueError(f"{path}: {id_field} {key!r} must be an int")
        if not isinstance(text, str):
            raise ValueError(f"{path}: the {text_field} for {id_field} {key} must be a string, got {text!r}")
    entries = [{id_field: key, text_field: texts[key]} for key in sorted(texts)]
    return write_bytes(Path(path), dump_json(entries))


def _check_ids(
    pred_path: Path, preds: Mapping[int, str], bench_path: Path, bench: Mapping[int, Any], id_field: str
) -> None:
    """FormatError unless the predictions cover exactly the benchmark's ids."""
    missing = sorted(bench.keys() - preds.keys())
    if missing:
        raise FormatError(
            f"{pred_path}: no prediction for {len(missing)} of the {len(bench)} {id_field}s of {bench_path} "
            f"(first missing: {missing[:_SHOWN]})"
        )
    extra = sorted(preds.keys() - bench.keys())
    if extra:
        raise FormatError(f"{pred_path}: {len(extra)} {id_field}s are not in {bench_path} (first: {extra[:_SHOWN]})")
