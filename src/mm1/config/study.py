"""Config of the study: the experiments (named override sets) and the figures built from them.

An *experiment* is a set of dotted config overrides over the base run (an ablation cell, e.g.
``{model.connector.kind: c_abstractor, model.connector.num_tokens: 16}``). The workflow runs every
stage once per distinct setting that stage reads (:mod:`mm1.study`): experiments that differ only
in the connector share one world, tokenizer, LLM and encoder. A *figure* names the experiments
whose results it compares. The paper's set lives in ``config/study.yaml``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mm1.config.base import Section

NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
BASE = "base"  # the experiment with no overrides: the run as the config file states it
SECTIONS = ("name", "world", "data", "tokenizer", "model", "parallel", "train", "eval", "sft")
# Stages whose config a study may adjust (study.stages) -- the rules of workflow/rules/*.smk.
STAGE_NAMES = (
    "world",
    "acquire",
    "tokenizer",
    "llm_pack",
    "llm",
    "encoder",
    "pack",
    "train",
    "eval",
    "sft_pack",
    "sft",
    "sft_eval",
)

Overrides = dict[str, Any]


def _check_overrides(where: str, overrides: Overrides) -> None:
    for key in overrides:
        head = key.split(".", 1)[0]
        if key == "preset":  # a preset's keys as overrides (mm1.study.expand)
            continue
        if head not in SECTIONS:
            raise ValueError(f"{where}: override {key!r} does not start with a config section ({', '.join(SECTIONS)})")
        if not all(part for part in key.split(".")):
            raise ValueError(f"{where}: override {key!r} has an empty part")


class FigureSpec(Section):
    """One paper figure or table: the experiments it compares and which evaluation it reads."""

    title: str
    """What the figure shows (its heading)."""
    experiments: list[str] = Field(min_length=1)
    """The cells, in plotting order (names from study.experiments, or "base")."""
    evaluation: Literal["eval", "sft_eval"] = "eval"
    """eval: few-shot scores of the pre-trained model; sft_eval: 0-shot scores after SFT."""


class StudyConfig(Section):
    """The experiments of the study and the figures that compare them."""

    experiments: dict[str, Overrides] = {}
    """Experiment name -> dotted overrides over the base config (names: letters, digits, _ -);
    ``preset: NAME`` (or a list) stands for that preset's keys, e.g. an encoder or decoder swap."""
    figures: dict[str, FigureSpec] = {}
    """Figure id (e.g. fig4) -> its cells; each id is a Snakemake target and a DVC stage."""
    stages: dict[str, Overrides] = {}
    """Stage -> overrides that stage always applies (e.g. the LLM stage's text-only mixture)."""
    init_decoder: bool = True
    """Multimodal pre-training starts its decoder from the text-only LLM stage (MM1: a pre-trained LLM)."""
    init_encoder: bool = True
    """Multimodal pre-training starts its image encoder from the encoder stage (MM1: CLIP/AIM pre-trained)."""

    @field_validator("experiments")
    @classmethod
    def _experiments(cls, value: dict[str, Overrides]) -> dict[str, Overrides]:
        for name, overrides in value.items():
            if not re.match(NAME, name):
                raise ValueError(f"experiment name {name!r} must be letters, digits, _ or - (not starting with _ or -)")
            if name == BASE:
                raise ValueError(f"{BASE!r} is the run without overrides; pick another experiment name")
            _check_overrides(f"experiment {name!r}", overrides)
        return value

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: dict[str, Overrides]) -> dict[str, Overrides]:
        for stage, overrides in value.items():
            if stage not in STAGE_NAMES:
                raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_NAMES)}")
            _check_overrides(f"stage {stage!r}", overrides)
        return value

    @model_validator(mode="after")
    def _figures(self) -> StudyConfig:
        known = {BASE, *self.experiments}
        for fig, spec in self.figures.items():
            if not re.match(NAME, fig):
                raise ValueError(f"figure id {fig!r} must be letters, digits, _ or -")
            missing = [e for e in spec.experiments if e not in known]
            if missing:
                raise ValueError(
                    f"figure {fig!r} names unknown experiments {missing}; declare them in study.experiments"
                )
            if len(set(spec.experiments)) != len(spec.experiments):
                raise ValueError(f"figure {fig!r} lists an experiment twice: {spec.experiments}")
        return self
