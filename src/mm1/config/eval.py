"""Config of evaluation: the benchmarks, the few-shot harness, prompt templates, decoding."""

from __future__ import annotations

import re
import string
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mm1.config.base import FILE_NAME, Section, Seed

MARKERS: tuple[str, ...] = ("<image>", "<eoc>", "<eos>")
"""Markers a prompt template may use: the image's slots, end-of-caption, end-of-text."""
ANSWER_FIELD: dict[str, str] = {"captioning": "caption", "vqa": "answer"}
"""The field of each task's template the model writes; the query prompt ends before it."""
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {"captioning": ("caption",), "vqa": ("question", "answer")}
GENERATION_METRIC: dict[str, str] = {"captioning": "CIDEr", "vqa": "accuracy"}
"""Each task's scores.csv metric of decoded answers (CIDEr-D x 100, VQA accuracy %)."""
LIKELIHOOD_METRIC: dict[str, str] = {"captioning": "ref_prob", "vqa": "ll_accuracy"}
"""Each task's 0-100 likelihood score in scores.csv (captioning also writes "ref_nll", its source)."""
TASK_FORMATS: dict[str, tuple[str, ...]] = {
    "captioning": ("coco", "textcaps", "nocaps"),
    "vqa": ("vqav2", "textvqa", "vizwiz", "gqa"),
    "multiple_choice": ("scienceqa", "mmmu", "mmbench", "seed_bench"),
    "yes_no": ("pope", "mme"),
    "math": ("mathvista",),
}
"""Each task type's file formats (the first is its default): captioning and vqa read the official files of
MM1's Table 3 benchmarks (OK-VQA comes in VQAv2's layout; :mod:`mm1.eval.official`); the last three are MM1's Table 4
benchmarks that can be scored offline (:mod:`mm1.eval.table4`), 0-shot with ``mm1 eval run --sft``."""
TABLE4_TASKS: tuple[str, ...] = ("multiple_choice", "yes_no", "math")
ONE_FILE_VQA: tuple[str, ...] = ("textvqa", "vizwiz", "gqa")
"""VQA formats whose questions and answers are in one file (no annotations JSON)."""
EXACT_MATCH_FORMATS: tuple[str, ...] = ("gqa",)
"""Formats scored by exact match (:func:`mm1.eval.vqa_metric.exact_match_scores`), not VQA accuracy:
GQA has one answer per question, against which VQA accuracy is always 0."""
UNSUPPORTED: dict[str, str] = {
    "llava_bench": "LLaVA-Bench-in-the-Wild",
    "llava_bench_in_the_wild": "LLaVA-Bench-in-the-Wild",
    "llava_wild": "LLaVA-Bench-in-the-Wild",
    "mm_vet": "MM-Vet",
    "mmvet": "MM-Vet",
}
"""Table 4 benchmarks mm1 does not score: their official score is a GPT-4 judge's rating of free-form
answers (LLaVA-Bench: relative to GPT-4's own answers; MM-Vet: a 0-1 grade per answer), which
cannot be computed offline or reproduced without that model."""


class BenchmarkSpec(Section):
    """One benchmark: files in their official formats (COCO captions JSON, VQAv2 questions + annotations
    JSON, the TextVQA, VizWiz, GQA, TextCaps and NoCaps files; Table 4's), each with an image folder.
    Relative paths are read from the eval stage's ``--data`` folder (the world stage's output);
    absolute paths point anywhere, e.g. at the real COCO."""

    name: str = Field(pattern=FILE_NAME)
    """Name in results (predictions/<name>_<k>shot.json, scores.csv)."""
    task: Literal["captioning", "vqa", "multiple_choice", "yes_no", "math"]
    """captioning: CIDEr (NoCaps also per domain); vqa: VQA accuracy (GQA: exact match);
    multiple_choice, yes_no, math: MM1's Table 4 benchmarks with their official scores, scored
    0-shot by ``mm1 eval run --sft`` only (the pre-trained evaluation leaves them out).
    LLaVA-Bench-in-the-Wild and MM-Vet are not supported (their score is a GPT-4 judge's)."""
    format: (
        Literal[
            "coco", "textcaps", "nocaps", "vqav2", "textvqa", "vizwiz", "gqa",
            "scienceqa", "mmmu", "mmbench", "seed_bench", "pope", "mme", "mathvista",
        ]
        | None
    ) = None  # fmt: skip
    """The files' official format (docs/evaluation.md): captioning: coco, textcaps, nocaps; vqa: vqav2
    (also OK-VQA), textvqa, vizwiz, gqa; multiple_choice: scienceqa, mmmu, mmbench, seed_bench; yes_no:
    pope, mme; math: mathvista. Default: the task's first (required for multiple_choice and yes_no)."""
    val: str
    """The evaluated split: coco: captions_*.json; vqav2: the questions JSON; textvqa:
    TextVQA_0.5.1_val.json; vizwiz: val.json; gqa: val_balanced_questions.json; textcaps:
    TextCaps_0.1_val.json; nocaps: nocaps_val_4500_captions.json; scienceqa: problems.json; mmmu: a
    parquet or JSON file; mmbench: the TSV; seed_bench: SEED-Bench.json; pope: the jsonl; mathvista:
    testmini.json; mme: the MME_Benchmark_release_version folder."""
    val_annotations: str | None = None
    """vqav2: the annotations JSON; default: ``val`` with "_questions" replaced by "_annotations".
    scienceqa: pid_splits.json (default: beside problems.json). Not set for the other formats."""
    val_images: str | None = None
    """Image folder of ``val``; default: images/<split> beside it (coco, vqav2); textvqa, textcaps:
    train_images/ beside it; nocaps: images/ beside it; gqa: images/ beside it or beside its folder;
    vizwiz: the folder named as the file (val/) beside it or beside its folder (annotations/val.json);
    scienceqa: images/ beside problems.json; seed_bench: SEED-Bench-image/; pope, mathvista: the
    file's folder."""
    split: str | None = None
    """scienceqa only: the split of pid_splits.json to score; default "test" (ScienceQA-IMG is the
    test split's questions that have an image)."""
    train: str | None = None
    """The split few-shot demonstrations come from (same format); none: 0-shot only."""
    train_annotations: str | None = None
    """vqa: annotations of ``train`` (default as for val_annotations)."""
    train_images: str | None = None
    """Image folder of ``train`` (default as for val_images)."""

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: object) -> object:
        if isinstance(data, dict):
            for key in ("task", "format"):
                value = str(data.get(key, "")).lower().replace("-", "_")
                if value in UNSUPPORTED:
                    raise ValueError(
                        f"benchmark {data.get('name')}: {key} {data[key]!r}: {UNSUPPORTED[value]} is not supported: "
                        "its official score is a GPT-4 judge's rating, which cannot be computed offline; "
                        "remove it from eval.benchmarks (docs/evaluation.md, Table 4)"
                    )
        return data

    @model_validator(mode="after")
    def _format_fits_task(self) -> BenchmarkSpec:
        formats = TASK_FORMATS[self.task]
        if self.format is None and self.task in TABLE4_TASKS and len(formats) > 1:
            raise ValueError(f"benchmark {self.name}: task {self.task} needs a format, one of {list(formats)}")
        if self.format is not None and self.format not in formats:
            raise ValueError(
                f"benchmark {self.name}: format {self.format} is not one of task {self.task}'s {list(formats)}"
            )
        if self.task in TABLE4_TASKS and (self.train or self.train_annotations or self.train_images):
            raise ValueError(f"benchmark {self.name}: Table 4 benchmarks are scored 0-shot; remove its train split")
        if self.split is not None and self.format != "scienceqa":
            raise ValueError(f"benchmark {self.name}: split is read only by format scienceqa; remove it")
        return self

    @property
    def file_format(self) -> str:
        """``format``, or the task's first format when it is not set."""
        return self.format or TASK_FORMATS[self.task][0]

    @property
    def answer_metric(self) -> Literal["vqa_accuracy", "exact_match"]:
        """How a VQA benchmark's answers are scored: exact match for GQA, VQA accuracy otherwise."""
        return "exact_match" if self.file_format in EXACT_MATCH_FORMATS else "vqa_accuracy"

    @model_validator(mode="after")
    def _annotations_only_for_vqa(self) -> BenchmarkSpec:
        if self.task == "captioning" and (self.val_annotations or self.train_annotations):
            raise ValueError(
                f"benchmark {self.name}: captioning references live in the captions JSON; "
                "val_annotations / train_annotations are for vqa"
            )
        if self.file_format in ONE_FILE_VQA and (self.val_annotations or self.train_annotations):
            raise ValueError(
                f"benchmark {self.name}: format {self.file_format} keeps its answers in the questions file; "
                "remove val_annotations / train_annotations"
            )
        return self


class PromptConfig(Section):
    """How one task's demonstrations and query are written, and how its answer is decoded."""

    template: str
    """One demonstration. ``<image>`` marks the image's slots, ``<eoc>``/``<eos>`` those special
    tokens, ``{field}`` the example's text (captioning: {caption}; vqa: {question}, {answer}).
    The query is the same template cut before the answer field; the model writes the rest."""
    max_new_tokens: int = Field(ge=1)
    """Greedy decoding stops at <eos>/<eoc> or after this many tokens."""
    stop: tuple[str, ...] = ()
    """The generated text is cut at the first of these strings (e.g. "\\n", "Question:")."""


def _template_fields(template: str, name: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"{name} is not a valid format string ({e}); write braces as {{{{ }}}}") from e


def check_template(template: str, task: str, name: str) -> None:
    """Raise a ValueError naming ``name`` unless ``template`` fits ``task``."""
    fields = _template_fields(template, name)
    allowed = TEMPLATE_FIELDS[task]
    if sorted(fields) != sorted(allowed):
        raise ValueError(f"{name} must contain each of {{{'}, {'.join(allowed)}}} exactly once, got {fields}")
    if template.count("<image>") != 1:
        raise ValueError(f"{name} must contain <image> exactly once (where the image's slots go)")
    unknown = set(re.findall(r"<[a-z]+>", template)) - set(MARKERS)
    if unknown:
        raise ValueError(f"{name} uses unknown markers {sorted(unknown)}; allowed: {list(MARKERS)}")
    answer = "{" + ANSWER_FIELD[task] + "}"
    if template.index(answer) < template.index("<image>"):
        raise ValueError(f"{name}: the image must come before {answer} (the query is cut before it)")


class SFTEvalConfig(Section):
    """0-shot evaluation of an instruction-tuned model, with the chat template of ``sft``."""

    caption_instruction: str = "Write a detailed caption for this image."
    """The user's turn for captioning benchmarks (after the image)."""
    vqa_instruction: str = "{question}\nAnswer the question using a single word or phrase."
    """The user's turn for VQA benchmarks (after the image); {question} is the question. Also the
    yes/no questions of POPE and MME (Table 4)."""
    choice_instruction: str = "Answer with the option's letter from the given choices directly."
    """Table 4's multiple-choice questions: the last line of the user turn, after the question and its
    options ("A. ..." lines); the option letters are then ranked by likelihood (LLaVA-1.5's wording)."""
    multiple_choice: str | None = "sft/multiple_choice.jsonl"
    """Multiple-choice items (jsonl: id, image, question, choices, answer), scored by the
    likelihood of each choice as the answer; none: skip."""

    @field_validator("vqa_instruction")
    @classmethod
    def _question_field(cls, value: str) -> str:
        if _template_fields(value, "eval.sft.vqa_instruction") != ["question"]:
            raise ValueError("vqa_instruction must contain {question} exactly once and no other field")
        return value


def _world(name: str, task: str) -> BenchmarkSpec:
    if task == "captioning":
        return BenchmarkSpec(name=name, task=task, val=f"benchmarks/{name}/captions_val.json",
                             train=f"benchmarks/{name}/captions_train.json")  # fmt: skip
    return BenchmarkSpec(name=name, task=task, val=f"benchmarks/{name}/{name}_val_questions.json",
                         train=f"benchmarks/{name}/{name}_train_questions.json")  # fmt: skip


WORLD_BENCHMARKS: tuple[BenchmarkSpec, ...] = tuple(
    [_world(n, "captioning") for n in ("coco", "nocaps", "textcaps")]
    + [_world(n, "vqa") for n in ("vqav2", "textvqa", "vizwiz", "gqa", "okvqa")]
)


class EvalConfig(Section):
    """Few-shot evaluation of pre-trained models (MM1 Table 3) and 0-shot of SFT models (Table 4)."""

    shots: tuple[int, ...] = (0, 4, 8)
    """Demonstrations per prompt; each count is a separate evaluation (MM1: 0, 4, 8)."""
    demos: Literal["random", "rices"] = "random"
    """How demonstrations are picked from the benchmark's train split: random (seeded per
    example), or rices: the most similar images by encoder features (cosine; see rices_encoder)."""
    rices_encoder: str | None = None
    """RICES only: a checkpoint folder whose image encoder ranks the demonstrations for every
    evaluated model (an encoder stage's checkpoint/, or ``mm1 import-hf --vision``'s), as
    OpenFlamingo ranks with one fixed CLIP ViT-L/14; then an encoder ablation does not change its
    own demonstrations. Unset: each model's own encoder. The folder must exist before evaluation
    starts (it is not a stage of the workflow; provenance.json records its hash)."""
    seed: Seed = 0
    """Seed of the random demonstrations."""
    num_examples: int = Field(0, ge=0)
    """Decode answers (CIDEr, VQA accuracy) for the first N examples of each benchmark (images or
    questions); 0 means all. The likelihood scores always use every val example."""
    likelihood: bool = True
    """Pre-trained checkpoints: also score every val example by likelihood, no decoding (VQA: the
    answer candidates ranked by log-probability; captioning: the references' token NLL)."""
    micro_batch_size: int = Field(16, ge=1)
    """Prompts decoded together (and TextCore / multiple-choice candidates scored together)."""
    max_images: int = Field(16, ge=1)
    """Most images in one prompt (MM1 pre-trains with up to 16): demonstrations beyond are dropped."""
    overflow: Literal["drop_earliest", "error"] = "drop_earliest"
    """A prompt longer than the model's context (with max_new_tokens) or with too many images:
    drop_earliest removes demonstrations from the front until it fits (counted in scores.csv,
    column demos_dropped); error stops."""
    benchmarks: tuple[BenchmarkSpec, ...] = WORLD_BENCHMARKS
    """The benchmarks; the default is the synthetic world's eight (3 captioning, 5 VQA)."""
    captioning: PromptConfig = PromptConfig(template="<image>{caption}<eoc>", max_new_tokens=30)
    """Captioning prompts; the default is how caption pairs are packed in pre-training."""
    vqa: PromptConfig = PromptConfig(
        template="<image>Question: {question} Answer: {answer}\n", max_new_tokens=6, stop=("\n", "Question", "?")
    )
    """VQA prompts; the default is one of the Q/A styles of the interleaved documents, each answer
    ended by a newline (the terminator the world's QA texts use), so an answer has a learnt end."""
    textcore: str | None = "benchmarks/textcore/textcore.jsonl"
    """Text-only tasks (jsonl: id, task, prompt, answer, choices), scored by choice likelihood; none: skip."""
    sft: SFTEvalConfig = SFTEvalConfig()
    """Prompts of the 0-shot evaluation of SFT checkpoints (``mm1 eval run --sft``)."""

    @field_validator("shots")
    @classmethod
    def _shots(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(k < 0 for k in value) or len(set(value)) != len(value):
            raise ValueError(f"shots must be distinct counts >= 0, at least one, got {list(value)}")
        return tuple(sorted(value))

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        check_template(self.captioning.template, "captioning", "eval.captioning.template")
        check_template(self.vqa.template, "vqa", "eval.vqa.template")
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"eval.benchmarks names must be unique, got {names}")
        if max(self.shots) > 0:
            no_pool = [b.name for b in self.benchmarks if b.train is None and b.task not in TABLE4_TASKS]
            if no_pool:
                raise ValueError(
                    f"eval.shots asks for {max(self.shots)} demonstrations but benchmarks {no_pool} "
                    "have no train split to draw them from; set their train path or shots: [0]"
                )
        if self.rices_encoder and self.demos != "rices":
            raise ValueError(
                f"eval.rices_encoder is set ({self.rices_encoder!r}) but eval.demos is {self.demos!r}: "
                "set eval.demos: rices, or remove rices_encoder"
            )
        return self
