"""The study's jobs, as the stage registry and the study define them, without Snakemake.

Snakemake runs them (``workflow/``: its rules take their inputs, outputs, commands and targets from
here) and DVC versions them (:mod:`mm1.dvc_stages` writes ``dvc.yaml`` from here); a test keeps
Snakemake's DAG and DVC's graph equal. Three things live here:

* :func:`assemble`: the workflow's config from ``config/default.yaml``, a preset, the study file
  and what ``--configfile``/``--config`` give (the Snakefile's config);
* :class:`Pipeline`: each stage run's inputs and command options, each report's inputs and command
  line, and the runs a set of files needs (:meth:`Pipeline.closure`);
* :data:`TARGETS`: the named targets (``snakemake all_figures``, ``dvc repro fig4``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from mm1.config.presets import deep_merge, preset_data
from mm1.config.readers import read_yaml
from mm1.models.size import decoder_params
from mm1.stages import DATA, FIGURES, FIGURES_DIR, STAGES, Input, run_dir
from mm1.study import Study

DEFAULT_CONFIG = "config/default.yaml"
DEFAULT_STUDY = "config/study.yaml"
DEFAULT_TARGETS = ("all",)  # what `snakemake` builds


@dataclass(frozen=True)
class Setup:
    """What the workflow's config says beyond the run config: where it came from and the cluster GPU."""

    config: dict[str, Any]  # default.yaml (+ preset) + study file + the rest of what was given
    preset: str | None
    study_file: Path
    gpu: str | None  # the cluster's GPU type for the layout planner (profiles/slurm); None: CPU jobs


def assemble(given: dict[str, Any], root: Path) -> Setup:
    """The workflow's config: ``config/default.yaml`` (merged with the preset's files when ``preset:
    NAME`` is given), then the study file (``studyfile:``, default config/study.yaml), then the rest of
    ``given`` (what --configfile/--config hold). ``gpu: none``/``cpu`` means CPU jobs."""
    given = dict(given)
    preset = given.pop("preset", None)
    study_file = Path(given.pop("studyfile", None) or Path(root, DEFAULT_STUDY))
    gpu = given.pop("gpu", None)
    gpu = None if str(gpu).lower() in ("none", "cpu", "") else str(gpu)
    base = read_yaml(Path(root, DEFAULT_CONFIG))
    if preset:
        base = deep_merge(base, preset_data(str(preset)))
    if not study_file.is_file():
        raise ValueError(f"studyfile {study_file} does not exist (the study's experiments and figures)")
    base = deep_merge(base, read_yaml(study_file, "study file"))
    return Setup(deep_merge(base, given), str(preset) if preset else None, study_file, gpu)


@dataclass(frozen=True)
class Report:
    """One report job (a figure, the lessons, the power pilot): its command, inputs and outputs."""

    name: str  # the DVC stage (a figure's id, or the product's name)
    product: str  # mm1.stages.FIGURES key: which command writes it
    argv: tuple[str, ...]  # the mm1 command line, --out excluded
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class Pipeline:
    """The jobs of a study: stage runs (``results/<stage>/<run>/``) and reports (``results/figures/``)."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.run = study.base
        self.data = "acquire" if self.run.data.source == "acquired" else "world"
        self.lesson_figures = sorted({c.figure for lesson in self.run.study.lessons.values() for c in lesson.checks})

    # -- stage runs ----------------------------------------------------------------------------
    def upstream_stage(self, i: Input) -> str:
        return self.data if i.stage == DATA else i.stage

    def inits(self, stage: str) -> list[Input]:
        """The checkpoints multimodal pre-training starts from (study.init_decoder / init_encoder)."""
        wanted = {"llm": self.run.study.init_decoder, "encoder": self.run.study.init_encoder}
        return [i for i in STAGES[stage].inits if wanted[i.stage]]

    def inputs(self, stage: str, exp: str) -> list[tuple[Input, str]]:
        """Each input of the stage's run for ``exp`` with its path (``results/<stage>/<run>/<path>``)."""
        out = []
        for i in (*STAGES[stage].inputs, *self.inits(stage)):
            up = self.upstream_stage(i)
            folder = run_dir(up, self.study.run_of(up, exp))
            out.append((i, f"{folder}/{i.path}" if i.path else folder))
        return out

    def args(self, stage: str, exp: str) -> list[str]:
        """The options that hand the command its inputs, in the registry's order."""
        return [a for i, path in self.inputs(stage, exp) if i.option for a in (i.option, path)]

    def outputs(self, stage: str, run: str) -> list[str]:
        return [f"{run_dir(stage, run)}/{o.path}" for o in STAGES[stage].outputs]

    # -- reports -------------------------------------------------------------------------------
    def figure_runs(self, fig: str) -> list[tuple[str, str]]:
        """[(cell, run folder)] of a figure: every seed run of every cell, in order (mm1 compare --cell)."""
        spec = self.run.study.figures[fig]
        return [
            (exp, run_dir(spec.evaluation, self.study.run_of(spec.evaluation, run)))
            for exp in spec.experiments
            for run in self.study.seed_runs(exp, spec.seeds or self.run.study.seeds)
        ]

    def figure_meta(self, fig: str) -> list[dict[str, Any]]:
        """What ``mm1 compare`` needs to place each cell: its values of the figure's x/hue keys, its
        decoder's (active) parameter count and its effective SFT resolution (px x image grid, as its SFT
        stage runs: an experiment's sft_only overrides reach only that stage)."""
        spec = self.run.study.figures[fig]
        keys = [k for k in (*spec.x, spec.hue) if k and k != "effective_resolution"]
        meta = []
        for exp in spec.experiments:
            c, sft = self.study.config(exp), self.study.stage_config("sft", exp)
            data = c.model_dump(mode="json")
            meta.append(
                {"cell": exp}
                | {k: _attr(data, k) for k in keys}
                | {
                    "decoder_params": decoder_params(c.model.decoder, c.model.moe, c.tokenizer.vocab_size).active,
                    "effective_resolution": sft.model.encoder.image_size * sft.sft.image_grid,
                }
            )
        return meta

    def reports(self) -> dict[str, Report]:
        """Every report of the study: the base recipe's figure, each study figure, the lessons, the pilot."""
        return dict(self._reports)

    @cached_property
    def _reports(self) -> dict[str, Report]:
        study, out = self.run.study, {}
        base = {s: run_dir(s, self.study.run_of(s, "base")) for s in ("train", "eval")}
        out["figure"] = Report(
            "figure",
            "figure",
            ("figure", "--metrics", f"{base['train']}/metrics.csv", "--scores", f"{base['eval']}/scores.csv"),
            (f"{base['train']}/metrics.csv", f"{base['eval']}/scores.csv"),
            _files("figure"),
        )
        for fig, spec in study.figures.items():
            runs = self.figure_runs(fig)
            argv = ["compare", "--id", fig, "--spec", spec.model_dump_json()]
            argv += ["--meta", json.dumps(self.figure_meta(fig), sort_keys=True)]
            argv += [a for exp, folder in runs for a in ("--cell", f"{exp}={folder}")]
            inputs = sorted({f"{folder}/{name}" for _, folder in runs for name in STAGES[spec.evaluation].scored})
            out[fig] = Report(fig, "compare", tuple(argv), tuple(inputs), _files("compare", fig))
        if self.lesson_figures:
            lessons = json.dumps({k: v.model_dump(mode="json") for k, v in study.lessons.items()})
            seeds = [f"{FIGURES_DIR}/{fig}.seeds.csv" for fig in self.lesson_figures]
            argv = ["lessons", "--lessons", lessons]
            argv += [a for fig in self.lesson_figures for a in ("--seeds", f"{fig}={FIGURES_DIR}/{fig}.seeds.csv")]
            out["lessons"] = Report("lessons", "lessons", tuple(argv), tuple(seeds), _files("lessons"))
        if study.pilot:
            pilot = study.pilot
            seeds = f"{FIGURES_DIR}/{pilot.figure}.seeds.csv"
            argv = ["power", "--seeds", seeds, *(a for m in pilot.metrics for a in ("--metric", m))]
            argv += ["--effects", ",".join(f"{e:g}" for e in pilot.effects), "--study-seeds", str(study.seeds)]
            out["power"] = Report("power", "power", tuple(argv), (seeds,), _files("power"))
        return out

    # -- targets and what they need ------------------------------------------------------------
    def target_files(self, target: str) -> list[str]:
        """The files a named target (:data:`TARGETS`, or a figure id) asks for."""
        study, figs = self.run.study, list(self.run.study.figures)
        if target in figs:
            return [f"{FIGURES_DIR}/{target}.png", f"{FIGURES_DIR}/{target}.csv"]
        if target == "all":
            pack = run_dir("pack", self.study.run_of("pack", "base"))
            return [f"{FIGURES_DIR}/tiny_study.png", f"{FIGURES_DIR}/tiny_study.csv", f"{pack}/mixture.csv"]
        if target == "all_figures":
            files = [f for fig in figs for f in self.target_files(fig)]
            files += [f"{FIGURES_DIR}/lessons.md", f"{FIGURES_DIR}/lessons.csv"] if self.lesson_figures else []
            return files + ([f"{FIGURES_DIR}/power.md"] if study.pilot else [])
        if target == "sft_base":
            return [f"{run_dir('sft_eval', self.study.run_of('sft_eval', 'base'))}/scores.csv"]
        raise ValueError(f"unknown target {target!r}; targets: {', '.join([*TARGETS, *figs])}")

    def closure(self, files: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
        """The stage runs ``[(stage, run)]`` (upstream first) and the reports that make ``files``."""
        reports = self.reports()
        producers = {f: name for name, r in reports.items() for f in r.outputs}
        runs: dict[tuple[str, str], None] = {}
        wanted: dict[str, None] = {}

        def need_run(stage: str, run: str) -> None:
            if (stage, run) in runs:
                return
            for _, path in self.inputs(stage, run):
                need_file(path)
            runs[stage, run] = None

        def need_file(path: str) -> None:
            report = producers.get(path)
            if report is not None and report not in wanted:
                for f in reports[report].inputs:
                    need_file(f)
                wanted[report] = None
            parts = path.split("/")
            if report is None and len(parts) >= 3 and parts[0] == "results" and parts[1] in STAGES:
                need_run(parts[1], parts[2])  # a run folder (eval's --data), or a file in it

        for f in files:
            need_file(f)
        return list(runs), list(wanted)


TARGETS = ("all", "all_figures", "sft_base")  # besides one per figure id


def _files(product: str, fig: str = "") -> tuple[str, ...]:
    return tuple(f"{FIGURES_DIR}/{name.format(fig=fig)}" for name in FIGURES[product].outputs)


def _attr(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data
