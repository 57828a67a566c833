"""The evaluation benchmarks of the MM1 paper, on held-out images of the world.

Captioning (COCO format, `captions_per_image` references per image):
- "coco": in-domain scenes. - "nocaps": every image shows at least one of the reserved (colour,
  shape) pairs that no training source contains. - "textcaps": every image has a readable sign,
  and every reference mentions its text.
VQA (VQAv2 format, `answers_per_question` human answers per question):
- "vqav2": existence, counting, colour, shape, position, size, background.
- "textvqa": reading the sign. - "vizwiz": degraded images, some questions "unanswerable".
- "gqa": relations between objects. - "okvqa": needs the knowledge base of the text corpus.
Human answers simulate annotators: at least min(3, n) give the correct answer (so it scores 1.0
under VQA accuracy), the rest may give a synonym (`P_SYNONYM`) or a mistake (`P_MISTAKE`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mm1.data.records import CaptionBenchmark, VQABenchmark, VQAItem
from mm1.world.knowledge import Knowledge
from mm1.world.language import reference_captions
from mm1.world.questions import FALLBACK, UNANSWERABLE, Context, Question, answer_domain, ask, knowledge_target
from mm1.world.scene import Scene, unique_objects
from mm1.world.vocab import NUMBER_WORDS

CAPTION_BENCHMARKS: tuple[str, ...] = ("coco", "nocaps", "textcaps")
VQA_BENCHMARKS: tuple[str, ...] = ("vqav2", "textvqa", "vizwiz", "gqa", "okvqa")
SPLITS: tuple[str, ...] = ("val", "train")
QUESTIONS_PER_IMAGE: dict[str, int] = {"vqav2": 3, "textvqa": 1, "vizwiz": 1, "gqa": 2, "okvqa": 1}
"""Questions asked about each image (VQAv2 has about 3 per image)."""
FAMILY: dict[str, str] = {"vqav2": "vqav2", "textvqa": "text", "vizwiz": "vizwiz", "gqa": "gqa", "okvqa": "okvqa"}
FIRST_IMAGE_ID: dict[str, int] = {"val": 1, "train": 1_000_001}
"""Image ids of a split start here, so val and train ids never collide."""
P_SYNONYM = 0.15
P_MISTAKE = 0.07
SYNONYMS: dict[str, tuple[str, ...]] = {
    "gray": ("grey",), "purple": ("violet",), "circle": ("round", "circles"), "square": ("box", "squares"),
    "cross": ("plus", "plus sign"), "diamond": ("rhombus",), "star": ("stars",), "triangle": ("triangles",),
    "top left": ("upper left",), "top right": ("upper right",), "bottom left": ("lower left",),
    "bottom right": ("lower right",), "center": ("middle",), "large": ("big",), "small": ("little",),
    "mountains": ("mountain", "the mountains"), "ocean": ("sea",), "city": ("town",), "river": ("stream",),
    UNANSWERABLE: ("unsuitable",),
}  # fmt: skip
Draw = Callable[..., tuple[Scene, bytes]]
"""draw(rng, **sample_scene keywords) -> (scene, PNG bytes) of a new evaluation image."""
Rngs = Callable[[int], np.random.Generator]
"""The generator of item i of a split."""


def scene_settings(name: str, kb: Knowledge, rng: np.random.Generator, text_fraction: float) -> dict[str, Any]:
    """`sample_scene` keywords for one image of a benchmark (clean images except VizWiz)."""
    kw: dict[str, Any] = {"text_fraction": text_fraction, "degraded_fraction": 0.0, "combos": kb.allowed}
    if name == "nocaps":
        reserved = kb.reserved
        k = 2 if rng.random() < 0.3 else 1
        kw["must_include"] = [reserved[int(i)] for i in rng.choice(len(reserved), size=k, replace=False)]
    elif name in ("textcaps", "textvqa"):
        kw["need_sign"] = True
    elif name == "vizwiz":
        kw.update(degradation="any", text_fraction=0.5)
    elif name == "gqa":
        kw.update(min_objects=2, accept=lambda s: len(unique_objects(s)) >= 2)
    elif name == "okvqa":
        kw["accept"] = lambda s: knowledge_target(s, kb) is not None
    return kw


def caption_benchmark(
    name: str, split: str, n: int, k: int, rngs: Rngs, draw: Draw, kb: Knowledge, text_fraction: float
) -> CaptionBenchmark:
    """`n` images of a captioning benchmark split, `k` distinct references each."""
    images: dict[int, bytes] = {}
    references: dict[int, list[str]] = {}
    for i in range(n):
        rng = rngs(i)
        scene, png = draw(rng, **scene_settings(name, kb, rng, text_fraction))
        image_id = FIRST_IMAGE_ID[split] + i
        images[image_id] = png
        references[image_id] = reference_captions(scene, rng, k, read_sign=name == "textcaps")
    return CaptionBenchmark(name=name, split=split, images=images, references=references)


def vqa_benchmark(
    name: str, split: str, n: int, n_answers: int, rngs: Rngs, draw: Draw, ctx: Context, text_fraction: float
) -> VQABenchmark:
    """`n` images of a VQA benchmark split with QUESTIONS_PER_IMAGE[name] questions each."""
    if ctx.knowledge is None:
        raise ValueError("VQA benchmarks need the knowledge base (Context.knowledge) for OK-VQA and scenes")
    images: dict[int, bytes] = {}
    items: list[VQAItem] = []
    for i in range(n):
        rng = rngs(i)
        scene, png = draw(rng, **scene_settings(name, ctx.knowledge, rng, text_fraction))
        questions = _questions(scene, rng, name, ctx)
        image_id = FIRST_IMAGE_ID[split] + i
        images[image_id] = png
        for j, q in enumerate(questions):
            answers = human_answers(q, rng, n_answers, answer_domain(q, scene.grid, ctx.knowledge))
            items.append(VQAItem(image_id * 10 + j, image_id, q.text, answers, q.answer_type, q.kind))
    return VQABenchmark(name=name, split=split, images=images, items=items)


def _questions(scene: Scene, rng: np.random.Generator, name: str, ctx: Context) -> list[Question]:
    """QUESTIONS_PER_IMAGE distinct questions of the benchmark's family (topped up with fallback kinds)."""
    n = QUESTIONS_PER_IMAGE[name]
    out: list[Question] = []
    for _ in range(4 * n):
        q = ask(scene, rng, FAMILY[name], ctx, strict=True)
        if q is not None and q.text not in {o.text for o in out}:
            out.append(q)
            if len(out) == n:
                return out
    for asker in FALLBACK:  # rare: the scene supports too few distinct questions of the family
        q = asker(scene, rng, ctx)
        if q is not None and q.text not in {o.text for o in out}:
            out.append(q)
            if len(out) == n:
                return out
    raise RuntimeError(f"{name}: cannot ask {n} distinct questions about {scene}")


def human_answers(q: Question, rng: np.random.Generator, n: int, domain: tuple[str, ...]) -> tuple[str, ...]:
    """n annotator answers: min(3, n) correct, each other one maybe a synonym or a mistake."""
    answers = [q.answer] * n
    mistakes = [d for d in domain if d != q.answer] + ([UNANSWERABLE] if q.kind.startswith("blind") else [])
    for slot in range(min(3, n), n):
        r = rng.random()
        synonyms = _synonyms(q.answer)
        if r < P_SYNONYM and synonyms:
            answers[slot] = synonyms[int(rng.integers(len(synonyms)))]
        elif r < P_SYNONYM + P_MISTAKE and mistakes:
            answers[slot] = mistakes[int(rng.integers(len(mistakes)))]
    order = rng.permutation(n)
    return tuple(answers[int(i)] for i in order)


def _synonyms(answer: str) -> tuple[str, ...]:
    if answer.isdigit() and int(answer) < len(NUMBER_WORDS):
        return (NUMBER_WORDS[int(answer)],)
    return SYNONYMS.get(answer, ())
