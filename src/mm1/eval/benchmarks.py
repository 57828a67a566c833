"""Benchmarks as evaluation items and demonstration pools, read through the real-format readers.

A captioning benchmark (COCO caption JSON) gives one item per image with its references; a VQA
benchmark (VQAv2 questions + annotations) one item per question with its human answers. The
train split, when configured, is the pool few-shot demonstrations come from: each train image
with its first reference caption, or each train question with its most frequent answer (VQAv2's
``multiple_choice_answer``). The synthetic world's benchmarks are read by the same code, and the
official files of TextVQA, VizWiz, GQA, TextCaps and NoCaps by :mod:`mm1.eval.official` (the spec's
``format``), with no conversion step.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mm1.config.eval import BenchmarkSpec
from mm1.data.formats import read_coco_captions, read_vqa
from mm1.eval.official import READERS, Item, default_images
from mm1.eval.prompts import Example

__all__ = ["Benchmark", "Item", "demo_example", "load_benchmark"]


@dataclass(frozen=True)
class Benchmark:
    spec: BenchmarkSpec
    items: list[Item]
    pool: list[Item]
    """The train split's items (demonstrations); empty when the spec has no train split."""
    files: dict[str, Path]
    """The JSON files read (provenance)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def task(self) -> str:
        return self.spec.task


def demo_example(item: Item, task: str) -> Example:
    """A pool item as a demonstration: first reference caption / most frequent answer."""
    if task == "captioning":
        return Example(item.image, {"caption": item.targets[0]})
    answer = Counter(item.targets).most_common(1)[0][0]
    return Example(item.image, {"question": item.question or "", "answer": answer})


def _path(root: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value)
    return p if p.is_absolute() else root / p


def _read(spec: BenchmarkSpec, root: Path, split: str) -> tuple[list[Item], dict[str, Path]]:
    questions = _path(root, getattr(spec, split))
    annotations = _path(root, getattr(spec, f"{split}_annotations"))
    images = _path(root, getattr(spec, f"{split}_images"))
    if not questions.is_file():
        raise FileNotFoundError(f"eval.benchmarks[{spec.name}].{split}: {questions} does not exist")
    if spec.file_format in READERS:
        images = images if images is not None else default_images(spec.file_format, questions)
        return READERS[spec.file_format](questions, images), {split: questions}
    if spec.task == "captioning":
        bench = read_coco_captions(questions, images)
        items = [
            Item(key=i, image_id=i, image=bench.images[i], question=None, targets=tuple(bench.references[i]))
            for i in sorted(bench.images)
        ]
        return items, {split: questions}
    if annotations is None:
        annotations = questions.with_name(questions.name.replace("_questions", "_annotations"))
    if not annotations.is_file():
        raise FileNotFoundError(
            f"eval.benchmarks[{spec.name}].{split}_annotations: {annotations} does not exist "
            f"(set {split}_annotations to the VQAv2 annotations JSON of {questions.name})"
        )
    vqa = read_vqa(questions, annotations, images)
    items = [
        Item(key=q.question_id, image_id=q.image_id, image=vqa.images[q.image_id], question=q.question,
             targets=tuple(q.answers), answer_type=q.answer_type, question_type=q.question_type)
        for q in sorted(vqa.items, key=lambda q: q.question_id)
    ]  # fmt: skip
    return items, {split: questions, f"{split}_annotations": annotations}


def load_benchmark(spec: BenchmarkSpec, root: Path, *, with_pool: bool, num_examples: int = 0) -> Benchmark:
    """Read the val split (its first ``num_examples`` items when > 0) and, with ``with_pool``, the train split."""
    items, files = _read(spec, Path(root), "val")
    if not items:
        raise ValueError(f"eval.benchmarks[{spec.name}]: {files['val']} holds no usable example")
    if num_examples:
        items = items[:num_examples]
    pool: list[Item] = []
    if with_pool and spec.train is not None:
        pool, more = _read(spec, Path(root), "train")
        files |= more
        if not pool:
            raise ValueError(f"eval.benchmarks[{spec.name}]: the train split {files['train']} holds no example")
    return Benchmark(spec=spec, items=items, pool=pool, files=files)
