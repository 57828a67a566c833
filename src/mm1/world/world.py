"""`build_world(cfg)`: every data type of the MM1 paper from one seed, as in-memory records.

Training sources (drawn first): caption pairs, interleaved documents, SFT conversations, text
documents. Evaluation sources (drawn after, never repeating a training image): captioning and VQA
benchmarks (a "val" and a "train" split each), multiple-choice items and TextCore. Each record has
its own seeded stream (`images.stream_rng`), so the same config gives byte-identical records and
changing one count leaves the other sources as they were (up to the rare re-drawn eval image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from mm1.config.data import WorldConfig
from mm1.data.records import (
    CaptionBenchmark,
    CaptionSample,
    Conversation,
    InterleavedDoc,
    MultipleChoice,
    TextDoc,
    TextTask,
    VQABenchmark,
)
from mm1.progress import progress
from mm1.world.benchmarks import (
    CAPTION_BENCHMARKS,
    SPLITS,
    VQA_BENCHMARKS,
    caption_benchmark,
    scene_settings,
    vqa_benchmark,
)
from mm1.world.corpus import text_doc, textcore_task
from mm1.world.documents import make_document
from mm1.world.images import Canvas, ImageInfo, sha256, stream_rng
from mm1.world.knowledge import Knowledge, build_knowledge
from mm1.world.language import alt_caption, synthetic_caption
from mm1.world.questions import Context
from mm1.world.scene import Scene
from mm1.world.sft import make_conversation, make_multiple_choice


@dataclass
class World:
    """Every record of the world, plus the knowledge base and the scene behind every image."""

    cfg: WorldConfig
    knowledge: Knowledge
    captions: list[CaptionSample]
    documents: list[InterleavedDoc]
    texts: list[TextDoc]
    caption_benchmarks: list[CaptionBenchmark]
    """coco, nocaps, textcaps; each split "val" and "train"."""
    vqa_benchmarks: list[VQABenchmark]
    """vqav2, textvqa, vizwiz, gqa, okvqa; each split "val" and "train"."""
    textcore: list[TextTask]
    sft: list[Conversation]
    multiple_choice: list[MultipleChoice]
    images: list[ImageInfo]
    """Every rendered image in drawing order: source, training or not, PNG sha256, scene."""
    _scenes: dict[str, Scene] = field(default_factory=dict, repr=False)

    def scene_of(self, png: bytes) -> Scene:
        """The scene an image of this world shows."""
        if not self._scenes:
            for info in self.images:
                self._scenes.setdefault(info.sha256, info.scene)
        return self._scenes[sha256(png)]

    def caption_benchmark(self, name: str, split: str = "val") -> CaptionBenchmark:
        return next(b for b in self.caption_benchmarks if (b.name, b.split) == (name, split))

    def vqa_benchmark(self, name: str, split: str = "val") -> VQABenchmark:
        return next(b for b in self.vqa_benchmarks if (b.name, b.split) == (name, split))


def build_world(cfg: WorldConfig) -> World:
    """Draw every record of the world described by cfg (same cfg, same bytes)."""
    kb = build_knowledge(cfg.seed)
    canvas = Canvas(cfg.render_size, cfg.max_objects)
    rngs = partial(stream_rng, cfg.seed)
    training = {"text_fraction": cfg.text_fraction, "degraded_fraction": cfg.degraded_fraction, "combos": kb.allowed}
    ctx_train = Context(allowed=kb.allowed, knowledge=None)  # training text never states knowledge
    ctx_eval = Context(allowed=kb.allowed, knowledge=kb)
    n_bench = len(CAPTION_BENCHMARKS + VQA_BENCHMARKS) * (cfg.n_bench_val + cfg.n_bench_train)
    total = cfg.n_captions + cfg.n_documents + cfg.n_sft + cfg.n_text + n_bench + cfg.n_multiple_choice + cfg.n_textcore
    with progress(total=total, desc="world", unit="rec") as bar:

        def each(n: int, make):
            out = []
            for i in range(n):
                out.append(make(i))
                bar.update(1)
            return out

        def train_draw(source: str):
            return lambda rng: canvas.draw(rng, source, training=True, **training)

        captions = each(cfg.n_captions, lambda i: _caption_sample(i, rngs("captions", i), train_draw("captions"), kb))
        documents = each(
            cfg.n_documents, lambda i: _document(i, rngs("documents", i), cfg, train_draw("documents"), ctx_train)
        )
        sft = each(cfg.n_sft, lambda i: make_conversation(f"sft-{i:06d}", rngs("sft", i), train_draw("sft"), ctx_train))
        order = rngs("facts", 0).permutation(len(kb.facts()))
        texts = each(cfg.n_text, lambda i: text_doc(i, rngs("texts", i), kb, order, cfg.max_objects))
        # Evaluation: every image from here on is new (see Canvas).
        sizes = {"val": cfg.n_bench_val, "train": cfg.n_bench_train}
        caption_benchmarks, vqa_benchmarks = [], []
        for name in CAPTION_BENCHMARKS + VQA_BENCHMARKS:
            for split in SPLITS:
                draw = partial(canvas.draw, source=f"{name}/{split}", training=False)
                split_rngs = partial(rngs, f"{name}/{split}")
                if name in CAPTION_BENCHMARKS:
                    caption_benchmarks.append(
                        caption_benchmark(
                            name, split, sizes[split], cfg.captions_per_image, split_rngs, draw, kb, cfg.text_fraction
                        )
                    )
                else:
                    vqa_benchmarks.append(
                        vqa_benchmark(
                            name,
                            split,
                            sizes[split],
                            cfg.answers_per_question,
                            split_rngs,
                            draw,
                            ctx_eval,
                            cfg.text_fraction,
                        )
                    )
                bar.update(sizes[split])

        def eval_draw(rng: np.random.Generator):
            return canvas.draw(
                rng, "multiple_choice", training=False, **scene_settings("mc", kb, rng, cfg.text_fraction)
            )

        mc = each(
            cfg.n_multiple_choice, lambda i: make_multiple_choice(f"mc-{i:06d}", rngs("mc", i), eval_draw, ctx_eval)
        )
        textcore = each(cfg.n_textcore, lambda i: textcore_task(i, rngs("textcore", i), kb))
    return World(cfg, kb, captions, documents, texts, caption_benchmarks, vqa_benchmarks, textcore, sft, mc, canvas.log)


def _caption_sample(i: int, rng: np.random.Generator, draw, kb: Knowledge) -> CaptionSample:
    scene, png = draw(rng)
    alt, flags = alt_caption(scene, rng, kb.allowed)
    captions = {"alt": alt, "synthetic": synthetic_caption(scene, rng)}
    meta = {"scene": scene.to_dict(), "alt_generic": flags["generic"], "alt_wrong": flags["wrong"]}
    return CaptionSample(key=f"cap-{i:06d}", image=png, captions=captions, meta=meta)


def _document(i: int, rng: np.random.Generator, cfg: WorldConfig, draw, ctx: Context) -> InterleavedDoc:
    n_images = int(rng.integers(2, cfg.images_per_document + 1))
    return make_document(f"doc-{i:06d}", rng, n_images, draw, ctx)
