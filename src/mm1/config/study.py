"""Config of the study: the experiments (named override sets) and the figures built from them.

An *experiment* is a set of dotted config overrides over the base run (an ablation cell, e.g.
``{model.connector.kind: c_abstractor, model.connector.num_tokens: 16}``); its ``sft_only`` overrides
reach the SFT stages only (Fig 7: one pre-trained model fine-tuned at a higher resolution). The
workflow runs every stage once per distinct setting that stage reads (:mod:`mm1.study`):
experiments that differ only in the connector share one world, tokenizer, LLM and encoder. A
*figure* names the experiments whose results it compares. The paper's set lives in ``config/study.yaml``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mm1.config.base import Section
from mm1.stages import SCORED, STAGES

NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*"  # matched whole (re.fullmatch: a trailing newline fails too)
BASE = "base"  # the experiment with no overrides: the run as the config file states it
SECTIONS = ("name", "world", "data", "tokenizer", "model", "parallel", "train", "eval", "sft")

# An experiment's key whose dotted overrides only the SFT stages apply (mm1.study): Fig 7 raises the SFT
# input resolution of one pre-trained model, as MM1 does, without re-training its encoder or pre-training.
SFT_ONLY = "sft_only"
MAX_SEEDS = 100  # runs per figure cell; a study is planned in full (every run resolved) before it starts
Overrides = dict[str, Any]


def _check_overrides(where: str, overrides: Overrides, presets: bool = True) -> None:
    for key in overrides:
        head = key.split(".", 1)[0]
        if key == "preset" and presets:  # a preset's keys as overrides (mm1.study.expand)
            continue
        if head not in SECTIONS:
            raise ValueError(f"{where}: override {key!r} does not start with a config section ({', '.join(SECTIONS)})")
        if not all(part for part in key.split(".")):
            raise ValueError(f"{where}: override {key!r} has an empty part")


FORMS = ("bars", "lr_sweep", "benchmarks", "sweep")


class FigureSpec(Section):
    """One paper figure or table: the experiments it compares, which stage's results it reads and how
    it is drawn (mm1.figures.compare)."""

    title: str
    """What the figure shows (its heading)."""
    experiments: list[str] = Field(min_length=1)
    """The cells, in plotting order (names from study.experiments, or "base")."""
    evaluation: Literal[SCORED] = "eval"  # type: ignore[valid-type]  # the registry's scored stages
    """The stage whose runs it compares (one with ``scored`` outputs in mm1.stages): eval: few-shot
    scores of the pre-trained model; sft_eval: 0-shot scores after SFT; train: the pre-training loss
    curve (fig6 picks each size's best LR by final loss)."""
    form: Literal["bars", "lr_sweep", "benchmarks", "sweep"] = "bars"
    """bars: one panel per metric (TextCore, 0/4/8-shot), a bar per cell with its 95% CI (Table 1,
    Fig 4, Fig 5, Fig 8); lr_sweep: the metric against peak LR per decoder size, each size's best LR
    against decoder parameters (log-log), the fitted law and the paper's (Fig 6); benchmarks: a table
    of every benchmark per cell (Tables 3, 4); sweep: the metric against each key of ``x`` (Fig 7)."""
    x: list[str] = []
    """Dotted config keys (or ``effective_resolution``) that group the cells (bars) or form the x axis (sweep)."""
    hue: str | None = None
    """Dotted config key whose value colours the bars (Fig 4: model.connector.kind)."""
    metrics: list[str] = []
    """Metrics to draw (names as in the figure CSV, e.g. "0-shot", "textcore"); [] = the evaluation's defaults."""
    paper: dict[str, dict[str, float]] = {}
    """The paper's published values: cell -> metric -> value (the CSV's ``paper`` column). Only numbers
    the paper prints; a cell without one stays empty."""
    seeds: int | None = Field(default=None, ge=2, le=MAX_SEEDS)
    """Runs per cell of this figure (at most 100); none: ``study.seeds``. The pilot figure runs a few cells with more
    seeds than the study to measure the per-run noise (``study.pilot``)."""
    paper_source: str = ""
    """Where ``paper`` comes from (e.g. "arXiv 2403.09611v4, Table 3") and which paper row each cell stands for."""


DIRECTIONAL = ("a>b", "a<b")  # the checks Holm's adjustment covers (mm1.figures.lessons)


class LessonCheck(Section):
    """One comparison that tests a lesson: the effect mean(a) - mean(b) (minus mean(c) - mean(d) when
    given) of ``metric`` in ``figure``, per seed, with its 95% CI (statistics: mm1.figures.lessons)."""

    figure: str
    """Figure id whose per-seed results (results/figures/<id>.seeds.csv) it reads."""
    metric: str
    """The metric the check reads, declared before the final run: a metric of that figure's seeds
    table, e.g. "0-shot", "8-shot ll", "captioning 4-shot ll", "textcore"."""
    a: list[str] = Field(min_length=1)
    """Cells averaged on the "a" side (per seed)."""
    b: list[str] = Field(min_length=1)
    """Cells averaged on the "b" side."""
    c: list[str] = []
    """With ``d``: the effect is (a - b) - (c - d), e.g. "resolution matters more than encoder size"."""
    d: list[str] = []
    """The cells subtracted from ``c`` (see ``c``)."""
    test: Literal["welch", "paired", "factorial"] = "welch"
    """The design of the comparison. welch: the sides are independent runs (always valid);
    paired: seed s of every cell shares data order and initialisation, so the effect is the mean of
    the per-seed differences; factorial: the main effect of one factor in the lesson's ``factors``
    design of this figure (OLS with seed blocks over all its cells), a and b being all the cells at
    two levels of that factor."""
    expect: Literal["a>b", "a<b", "a~b", "a>=b"]
    """The paper's claim: the effect is positive (a>b), negative (a<b), within +-``margin`` of zero
    (a~b: equivalent), or above -``margin`` (a>=b: not worse by more than the margin)."""
    margin: float = Field(default=0.0, ge=0)
    """For a~b and a>=b: the equivalence margin (tolerance) in the metric's units, i.e. the largest
    effect that still counts as "no effect"; stated before the final run."""
    description: str = ""
    """What the comparison means, in the paper's words."""
    note: str = ""
    """A caveat printed beside the check, e.g. what its CI is conditional on."""

    @model_validator(mode="after")
    def _pairs(self) -> LessonCheck:
        if bool(self.c) != bool(self.d):
            raise ValueError("a lesson check gives both c and d (a difference of differences) or neither")
        if self.expect not in DIRECTIONAL and self.margin <= 0:
            raise ValueError(
                f'expect "{self.expect}" needs margin > 0: the equivalence tolerance, in the metric\'s units'
            )
        if self.expect in DIRECTIONAL and self.margin:
            raise ValueError(f'expect "{self.expect}" takes no margin (only a~b and a>=b do); remove margin')
        if self.test == "factorial" and self.c:
            raise ValueError("test factorial estimates one main effect: give a and b, not c and d")
        return self


Levels = dict[str, str | int]  # factor -> level of one cell, e.g. {kind: avg_pool, tokens: 16}


class LessonSpec(Section):
    """One of the paper's lessons and the comparisons that test it."""

    statement: str
    """The lesson as the paper states it."""
    checks: list[LessonCheck] = Field(min_length=1)
    """The comparisons that test it; the lesson agrees when every check agrees."""
    factors: dict[str, dict[str, Levels]] = {}
    """For its ``test: factorial`` checks: figure id -> cell -> factor -> level, every cell of the
    factorial design (fig4: connector kind x image tokens x resolution). The main-effects model is
    fitted to all these cells."""

    @model_validator(mode="after")
    def _factorial(self) -> LessonSpec:
        for fig, cells in self.factors.items():
            names = {tuple(sorted(levels)) for levels in cells.values()}
            if len(names) != 1 or not next(iter(names)):
                raise ValueError(f"factors.{fig}: every cell needs a level of the same factors, got {sorted(names)}")
        for i, check in enumerate(self.checks, start=1):
            if check.test == "factorial":
                factorial_contrast(self.factors, check, f"check {i}")
        return self


def factorial_contrast(factors: dict[str, dict[str, Levels]], check: LessonCheck, where: str) -> tuple[str, str, str]:
    """(factor, level of a, level of b) of a factorial check: the one factor whose level is the same
    across the a cells and across the b cells and differs between them; a and b must be every cell of
    the design at those two levels. Errors name the check and the fix."""
    design = factors.get(check.figure)
    if not design:
        raise ValueError(f"{where}: test factorial needs factors.{check.figure} (cell -> factor -> level)")
    strangers = [c for c in (*check.a, *check.b) if c not in design]
    if strangers:
        raise ValueError(f"{where}: cells {strangers} have no levels in factors.{check.figure}")
    found = []
    for name in next(iter(design.values())):
        side_a, side_b = ({str(design[c][name]) for c in side} for side in (check.a, check.b))
        if len(side_a) == len(side_b) == 1 and side_a != side_b:
            found.append((name, side_a.pop(), side_b.pop()))
    if len(found) != 1:
        raise ValueError(f"{where}: a and b must differ in exactly one factor of factors.{check.figure}, got {found}")
    name, level_a, level_b = found[0]
    for side, level in ((check.a, level_a), (check.b, level_b)):
        every = sorted(c for c, levels in design.items() if str(levels[name]) == level)
        if sorted(side) != every:
            raise ValueError(f"{where}: the {name}={level} side must list every such cell of the design: {every}")
    return found[0]


class PilotSpec(Section):
    """The pilot (:mod:`mm1.figures.power`): the per-run sd of the declared metrics, measured on a few
    cells with more seeds, and the seeds per arm it implies (results/figures/pilot.{md,csv})."""

    figure: str
    """The pilot figure (its cells and ``seeds`` in study.figures); the first two cells are also compared
    paired by seed."""
    metrics: list[str] = Field(min_length=1)
    """The metrics whose noise is measured (the lessons' declared metrics)."""
    effects: list[float] = Field(min_length=1)
    """Target effects (in the metrics' units) for which the report gives the seeds per arm needed."""

    @field_validator("effects")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(not v > 0 for v in value):
            raise ValueError(f"pilot effects must be > 0, got {value}")
        return value


class StudyConfig(Section):
    """The experiments of the study and the figures that compare them."""

    experiments: dict[str, Overrides] = {}
    """Experiment name -> dotted overrides over the base config (names: letters, digits, _ -);
    ``preset: NAME`` (or a list) stands for that preset's keys, e.g. an encoder or decoder swap;
    ``sft_only: {KEY: VALUE}`` are overrides that only the SFT stages (sft_pack, sft, sft_eval) apply,
    over study.stages, each where that stage honours it (e.g. ``model.encoder.image_size``: SFT at a
    higher resolution from the same pre-trained model, its position embeddings interpolated)."""
    figures: dict[str, FigureSpec] = {}
    """Figure id (e.g. fig4) -> its cells; each id is a Snakemake target and a DVC stage."""
    stages: dict[str, Overrides] = {}
    """Stage -> overrides that stage always applies (e.g. the LLM stage's text-only mixture)."""
    init_decoder: bool = True
    """Multimodal pre-training starts its decoder from the text-only LLM stage (MM1: a pre-trained LLM)."""
    init_encoder: bool = True
    """Multimodal pre-training starts its image encoder from the encoder stage (MM1: CLIP/AIM pre-trained)."""
    seeds: int = Field(default=1, ge=1, le=MAX_SEEDS)
    """Runs per figure cell (at most 100): seed k > 0 adds the run ``<cell>-s<k>`` with train.seed + k (its own data
    order and init; the LLM and encoder stages are shared). Figures show mean +- 95% CI over seeds."""
    common: Overrides = {}
    """Overrides under every declared experiment (not under ``base``): the ablation scale, as MM1 ran
    its ablations on a smaller model than its final one."""
    pilot: PilotSpec | None = None
    """The pilot that sizes ``seeds`` (none: no pilot target)."""
    lessons: dict[str, LessonSpec] = {}
    """Lesson id -> the lesson and the comparisons that test it (results/figures/lessons.{md,csv})."""

    @field_validator("experiments")
    @classmethod
    def _experiments(cls, value: dict[str, Overrides]) -> dict[str, Overrides]:
        for name, overrides in value.items():
            if not re.fullmatch(NAME, name):
                raise ValueError(f"experiment name {name!r} must be letters, digits, _ or - (not starting with _ or -)")
            if name == BASE:
                raise ValueError(f"{BASE!r} is the run without overrides; pick another experiment name")
            rest = {k: v for k, v in overrides.items() if k != SFT_ONLY}
            _check_overrides(f"experiment {name!r}", rest)
            sft_only = overrides.get(SFT_ONLY, {})
            if not isinstance(sft_only, dict) or not all(isinstance(k, str) for k in sft_only):
                raise ValueError(
                    f"experiment {name!r}: {SFT_ONLY} takes dotted overrides ({{model.encoder.image_size: 48}}), "
                    f"got {sft_only!r}"
                )
            _check_overrides(f"experiment {name!r}, {SFT_ONLY}", sft_only, presets=False)
        return value

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: dict[str, Overrides]) -> dict[str, Overrides]:
        for stage, overrides in value.items():
            if stage not in STAGES:  # the stage registry, mm1.stages
                raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
            _check_overrides(f"stage {stage!r}", overrides)
        return value

    @field_validator("common")
    @classmethod
    def _common(cls, value: Overrides) -> Overrides:
        _check_overrides("study.common", value)
        return value

    @model_validator(mode="after")
    def _figures(self) -> StudyConfig:
        known = {BASE, *self.experiments}
        for fig, spec in self.figures.items():
            if not re.fullmatch(NAME, fig):
                raise ValueError(f"figure id {fig!r} must be letters, digits, _ or - (not starting with _ or -)")
            missing = [e for e in spec.experiments if e not in known]
            if missing:
                raise ValueError(
                    f"figure {fig!r} names unknown experiments {missing}; declare them in study.experiments"
                )
            if len(set(spec.experiments)) != len(spec.experiments):
                raise ValueError(f"figure {fig!r} lists an experiment twice: {spec.experiments}")
            strangers = [c for c in spec.paper if c not in spec.experiments]
            if strangers:
                raise ValueError(f"figure {fig!r}: paper values for cells it does not draw: {strangers}")
        seeded = re.compile(r"-s[0-9]+$")
        most = max([self.seeds, *(f.seeds or 1 for f in self.figures.values())])
        clash = [e for e in self.experiments if seeded.search(e)] if most > 1 else []
        if clash:
            raise ValueError(f"experiment names ending in -s<number> are the seed runs' names: rename {clash}")
        if self.pilot is not None:
            if self.pilot.figure not in self.figures:
                raise ValueError(
                    f"study.pilot.figure: unknown figure {self.pilot.figure!r}; figures: {', '.join(self.figures)}"
                )
            if len(self.figures[self.pilot.figure].experiments) < 2:
                raise ValueError(f"study.pilot.figure {self.pilot.figure!r} needs at least 2 cells (the paired sd)")
        for lesson, spec in self.lessons.items():
            for i, check in enumerate(spec.checks):
                where = f"lesson {lesson!r}, check {i + 1}"
                if check.figure not in self.figures:
                    raise ValueError(f"{where}: unknown figure {check.figure!r}; figures: {', '.join(self.figures)}")
                cells = self.figures[check.figure].experiments
                missing = [c for c in (*check.a, *check.b, *check.c, *check.d) if c not in cells]
                if missing:
                    raise ValueError(f"{where}: cells {missing} are not in figure {check.figure!r} ({cells})")
            for fig, design in spec.factors.items():
                where = f"lesson {lesson!r}, factors.{fig}"
                if fig not in self.figures:
                    raise ValueError(f"{where}: unknown figure {fig!r}; figures: {', '.join(self.figures)}")
                missing = [c for c in design if c not in self.figures[fig].experiments]
                if missing:
                    raise ValueError(f"{where}: cells {missing} are not in figure {fig!r}")
        return self
