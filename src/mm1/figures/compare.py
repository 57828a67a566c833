"""A paper figure or table from per-seed runs: each cell's mean +- 95% CI, drawn in the paper's form.

Inputs: the figure's :class:`~mm1.config.study.FigureSpec`; per seed run ``NAME=RUN_DIR`` (a name
given again is that cell's next seed; cells in order of first appearance), RUN_DIR being the output
folder of the stage ``spec.evaluation`` names; and ``meta`` (``--meta``: a JSON list of
{"cell": NAME, key: value}), the config values that place each cell: the spec's ``x`` and ``hue`` keys, and ``decoder_params`` for lr_sweep.

Metrics of one run (every one goes to the seeds table; ``spec.metrics`` picks those drawn):

* eval (``summary.csv``, ``scores.csv``): per shot count k "{k}-shot" (the mean over the captioning
  and VQA benchmarks: MM1's "k-shot average"), "captioning {k}-shot", "vqa {k}-shot" and, per
  benchmark, "{benchmark} {k}-shot" (CIDEr, VQA accuracy of decoded answers); the same from the
  likelihood scores of every val item (captioning: ref_prob, VQA: ll_accuracy, both 0-100):
  "{k}-shot ll", "captioning {k}-shot ll", "vqa {k}-shot ll", "{benchmark} {k}-shot ll";
  "0-shot image gain" (the 0-shot ll minus its shuffled-image control, :mod:`mm1.eval.ll_scores`);
  "textcore". Drawn by default: textcore, 0-, 4-, 8-shot ll, the metric the lessons declare
  (the benchmarks form: the decoded per-benchmark scores, as MM1's Table 3).
* sft_eval (the same files, 0-shot): "sft average", "captioning", "vqa", "multiple choice" and, per
  benchmark, "{benchmark}". Drawn by default: sft average, multiple choice.
* train (``metrics.csv``): "final loss" (the mean loss over the last 10% of rows, at least one) and
  "peak lr" (the largest lr). Drawn by default: final loss.

Outputs in ``out_dir``:

* ``ID.seeds.csv``: figure, cell, seed (0-based), run (RUN_DIR's name), metric, value; one row per
  cell, seed and metric (:mod:`mm1.figures.lessons` reads it).
* ``ID.csv``: figure, cell, metric, n_seeds, mean, ci95, low, high, paper, then one column per meta key
  above; one row per cell and metric. ci95 is the half-width of the Student-t 95% CI over seeds
  (:func:`~mm1.figures.stats.mean_ci`; ci95, low and high are empty for one seed); paper is
  ``spec.paper[cell][metric]`` where the paper prints it. lr_sweep adds per decoder size a row
  "best lr" (cell: the size's cell of lowest mean loss; mean: its peak lr; paper: MM1's law at that
  size) and, given two sizes or more, the least-squares fit ln(best lr) = slope * ln N + intercept
  as the rows cell "fit", metric "slope" / "intercept" (paper: MM1's -0.4214 / -0.5535).
* ``ID.png`` in ``spec.form`` (drawn by :mod:`mm1.figures.forms`), error bars the 95% CI, the
  number of seeds in the title:

  - bars (Table 1, Figs 4, 5, 8): a panel per metric, a bar per cell, the paper's values as black
    diamonds. With ``x`` the bars group by their x values; with ``hue`` they are coloured by its value.
  - lr_sweep (Fig 6): the loss against peak LR per decoder size (the best starred); each size's best
    LR against decoder parameters (log-log) with our fit and MM1's law over the same range.
  - benchmarks (Tables 3, 4): a table of "mean ± CI" per cell and benchmark (eval: per shot count;
    sft_eval: and multiple choice), the paper's values in a row under their cell.
  - sweep (Fig 7): a panel per ``x`` key: the first drawn metric against that key, over the cells
    whose other x values equal the first cell's.
* ``ID.provenance.json``, ``ID.config.yaml``: the spec, the cells' runs and meta, every file read.

Reads result tables only (polars, matplotlib); never imports torch (MM1's LR law comes from the
torch-free :mod:`mm1.models.size`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from mm1 import atomic, provenance
from mm1.config.base import FILE_NAME
from mm1.config.eval import GENERATION_METRIC, LIKELIHOOD_METRIC
from mm1.config.study import FigureSpec
from mm1.figures.forms import Meta, render
from mm1.figures.stats import mean_ci
from mm1.models.size import LR_INTERCEPT, LR_SLOPE, peak_lr
from mm1.stages import SCORED, STAGES

FILES = {name: STAGES[name].scored for name in SCORED}  # what a figure reads of each run it compares
COLUMNS = {
    "summary.csv": ("shots", "captioning_avg", "vqa_avg", "average", "captioning_ll", "vqa_ll", "average_ll")
    + ("textcore", "multiple_choice"),
    "scores.csv": ("benchmark", "task", "shots", "metric", "value"),
    "metrics.csv": ("step", "loss", "lr"),
}
DEFAULT_METRICS = {
    # the lessons' declared metric (config/study.yaml): the likelihood scores of every val item
    "eval": ("textcore", "0-shot ll", "4-shot ll", "8-shot ll"),
    "sft_eval": ("sft average", "multiple choice"),
    "train": ("final loss",),
}
SEEDS_COLUMNS = ("figure", "cell", "seed", "run", "metric", "value")
TABLE_COLUMNS = ("figure", "cell", "metric", "n_seeds", "mean", "ci95", "low", "high", "paper")
TASKS = ("captioning", "vqa")  # the benchmarks scored one by one (TextCore, multiple choice: one number)
FINAL_FRACTION = 0.1  # "final loss": the mean over this last fraction of the logged steps
EVAL_AVERAGES = re.compile(r"^((captioning|vqa) )?\d+-shot$|^textcore$|^(.+ )?\d+-shot ll$|^\d+-shot image gain$")
"""eval's metrics the benchmarks form leaves out: the averages, TextCore, every likelihood score."""
SUFFIX = {m: "" for m in GENERATION_METRIC.values()} | {m: " ll" for m in LIKELIHOOD_METRIC.values()}
"""scores.csv metric -> the suffix of its per-benchmark metric name ("ref_nll" is not one)."""
SFT_AVERAGES = ("sft average", "captioning", "vqa", "multiple choice")


@dataclass(frozen=True)
class Run:
    """One seed run of a cell: the output folder of the stage the figure reads."""

    cell: str
    seed: int
    folder: Path


def parse_cells(texts: list[str]) -> list[Run]:
    """``NAME=RUN_DIR`` items (the command line's --cell) -> runs, cell by cell, seeds in given order."""
    folders: dict[str, list[Path]] = {}
    for text in texts:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--cell {text!r} is not NAME=RUN_DIR")
        folders.setdefault(name, []).append(Path(path))
    if not folders:
        raise ValueError("a figure needs at least one --cell NAME=RUN_DIR")
    return [Run(cell, seed, folder) for cell, paths in folders.items() for seed, folder in enumerate(paths)]


def load_spec(text: str) -> FigureSpec:
    """The --spec JSON (``FigureSpec.model_dump_json()``), validated; errors name the field."""
    try:
        return FigureSpec.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<top>'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"--spec is not a valid figure spec: {problems}") from None


def load_meta(text: str | None) -> Meta:
    """The --meta JSON: a list of {"cell": NAME, key: value, ...} ({} when not given). A list, not an
    object keyed by cell, because it is derived data: mm1.dvc_stages tracks JSON objects in a rule's
    params as config sections."""
    try:
        rows = json.loads(text) if text else []
    except json.JSONDecodeError as exc:
        raise ValueError(f"--meta is not JSON: {exc}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("cell"), str) for r in rows):
        raise ValueError('--meta must be a JSON list [{"cell": NAME, key: value, ...}]')
    return {r["cell"]: {k: v for k, v in r.items() if k != "cell"} for r in rows}


def meta_keys(spec: FigureSpec) -> list[str]:
    """The meta keys that place a cell: spec.x, spec.hue and, for lr_sweep, decoder_params."""
    keys = [*spec.x, *([spec.hue] if spec.hue else []), *(["decoder_params"] if spec.form == "lr_sweep" else [])]
    return list(dict.fromkeys(keys))


def cell_meta(spec: FigureSpec, cells: list[str], meta: Meta) -> Meta:
    """Each cell's values of :func:`meta_keys`; a missing one is an error naming cell and key."""
    keys = meta_keys(spec)
    out = {}
    for cell in cells:
        given = meta.get(cell, {})
        missing = [k for k in keys if k not in given]
        if missing:
            raise ValueError(f"--meta gives cell {cell!r} no value of {missing} (the figure's x, hue or LR sweep)")
        out[cell] = {k: given[k] for k in keys}
    return out


# --- one run's metrics -------------------------------------------------------------------------


def _read(run: Run, name: str, stage: str) -> pl.DataFrame:
    path = run.folder / name
    where = f"cell {run.cell!r} (seed {run.seed})"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: {path} does not exist; run the {stage} stage for {run.folder.name} first")
    frame = pl.read_csv(path)
    missing = [c for c in COLUMNS[name] if c not in frame.columns]
    if missing or frame.is_empty():
        lack = f"lacks the columns {missing}" if missing else "has no rows"
        raise ValueError(f"{where}: {path} {lack}; rerun its {stage} stage")
    return frame


def _eval_metrics(run: Run) -> dict[str, Any]:
    summary, scores = (_read(run, name, "eval") for name in FILES["eval"])
    out: dict[str, Any] = {}
    for row in summary.sort("shots").iter_rows(named=True):
        k = row["shots"]
        out |= {f"{k}-shot": row["average"], f"captioning {k}-shot": row["captioning_avg"]}
        out[f"vqa {k}-shot"] = row["vqa_avg"]
        out |= {f"{k}-shot ll": row["average_ll"], f"captioning {k}-shot ll": row["captioning_ll"]}
        out[f"vqa {k}-shot ll"] = row["vqa_ll"]
        if row.get("image_gain") is not None:  # the shuffled-image control (0-shot; older runs lack it)
            out[f"{k}-shot image gain"] = row["image_gain"]
    out["textcore"] = next(iter(summary["textcore"].drop_nulls()), None)
    tasks = scores.filter(pl.col("task").is_in(TASKS) & pl.col("metric").is_in(list(SUFFIX)))
    tasks = tasks.sort("shots", maintain_order=True)
    return out | {
        f"{r['benchmark']} {r['shots']}-shot{SUFFIX[r['metric']]}": r["value"] for r in tasks.iter_rows(named=True)
    }


def _sft_metrics(run: Run) -> dict[str, Any]:
    summary, scores = (_read(run, name, "sft_eval") for name in FILES["sft_eval"])
    zero = summary.filter(pl.col("shots") == 0)
    if zero.is_empty():
        raise ValueError(f"cell {run.cell!r} (seed {run.seed}): {run.folder / 'summary.csv'} has no 0-shot row")
    row = zero.row(0, named=True)
    out = {"sft average": row["average"], "captioning": row["captioning_avg"], "vqa": row["vqa_avg"]}
    out["multiple choice"] = row["multiple_choice"]
    decoded = pl.col("metric").is_in(list(GENERATION_METRIC.values()))
    tasks = scores.filter(pl.col("task").is_in(TASKS) & (pl.col("shots") == 0) & decoded)
    return out | {r["benchmark"]: r["value"] for r in tasks.iter_rows(named=True)}


def _train_metrics(run: Run) -> dict[str, Any]:
    frame = _read(run, "metrics.csv", "train").sort("step")
    tail = frame.tail(max(1, int(FINAL_FRACTION * frame.height)))
    return {"final loss": tail["loss"].mean(), "peak lr": frame["lr"].max()}


READERS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "eval": _eval_metrics,
    "sft_eval": _sft_metrics,
    "train": _train_metrics,
}


def seeds_table(fig_id: str, spec: FigureSpec, runs: list[Run]) -> pl.DataFrame:
    """One row per (cell, seed, metric): every metric of every run (empty values left out)."""
    rows = [
        {"figure": fig_id, "cell": r.cell, "seed": r.seed, "run": r.folder.name, "metric": m, "value": float(v)}
        for r in runs
        for m, v in READERS[spec.evaluation](r).items()
        if v is not None
    ]
    types = (pl.String, pl.String, pl.Int64, pl.String, pl.String, pl.Float64)
    return pl.DataFrame(rows, schema=dict(zip(SEEDS_COLUMNS, types, strict=True)))


# --- the figure's table --------------------------------------------------------------------------


def cell_rows(fig_id: str, spec: FigureSpec, seeds: pl.DataFrame, meta: Meta) -> list[dict[str, Any]]:
    """One row per (cell, metric): mean and 95% CI over seeds, the paper's value, the cell's meta."""
    values: dict[tuple[str, str], list[float]] = {}
    for r in seeds.iter_rows(named=True):
        values.setdefault((r["cell"], r["metric"]), []).append(r["value"])
    rows = []
    for (cell, metric), vals in values.items():
        est = mean_ci(vals)
        ci = None if math.isnan(est.ci95) else est.ci95
        rows.append(
            {"figure": fig_id, "cell": cell, "metric": metric, "n_seeds": est.n, "mean": est.mean, "ci95": ci}
            | {"low": est.low if ci is not None else None, "high": est.high if ci is not None else None}
            | {"paper": spec.paper.get(cell, {}).get(metric)}
            | meta[cell]
        )
    return rows


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = slope * x + intercept (at least two distinct x)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def lr_rows(fig_id: str, rows: list[dict[str, Any]], loss: str, meta: Meta) -> list[dict[str, Any]]:
    """Per decoder size the "best lr" row (its cell of lowest mean ``loss``), then the "fit" rows."""

    by = {(r["cell"], r["metric"]): r for r in rows}
    sizes: dict[int, list[str]] = {}
    for cell in meta:
        if (cell, loss) not in by or (cell, "peak lr") not in by:
            raise ValueError(
                f"form lr_sweep needs each cell's {loss!r} and 'peak lr' (evaluation: train); {cell!r} lacks one"
            )
        sizes.setdefault(meta[cell]["decoder_params"], []).append(cell)
    out = []
    for n in sorted(sizes):
        best = min(sizes[n], key=lambda c: by[c, loss]["mean"])
        lr = by[best, "peak lr"]
        row = {"figure": fig_id, "cell": best, "metric": "best lr", "n_seeds": lr["n_seeds"], "mean": lr["mean"]}
        out.append(row | {"paper": peak_lr(n)} | meta[best])
    if len(sizes) > 1:
        slope, intercept = fit_line([math.log(n) for n in sorted(sizes)], [math.log(r["mean"]) for r in out])
        for name, ours, paper in (("slope", slope, LR_SLOPE), ("intercept", intercept, LR_INTERCEPT)):
            out.append({"figure": fig_id, "cell": "fit", "metric": name, "mean": ours, "paper": paper})
    return out


def drawn_metrics(spec: FigureSpec, present: list[str]) -> list[str]:
    """spec.metrics, else the form's defaults (benchmarks: every per-benchmark metric) among ``present``."""
    if spec.metrics:
        missing = [m for m in spec.metrics if m not in present]
        if missing:
            raise ValueError(f"spec.metrics {missing} are not metrics of these runs; they have: {', '.join(present)}")
        return list(spec.metrics)
    if spec.form == "benchmarks" and spec.evaluation == "eval":
        return [m for m in present if not EVAL_AVERAGES.match(m)]
    if spec.form == "benchmarks" and spec.evaluation == "sft_eval":
        return [m for m in present if m not in SFT_AVERAGES] + [m for m in ("multiple choice",) if m in present]
    drawn = [m for m in DEFAULT_METRICS[spec.evaluation] if m in present]
    if not drawn:
        raise ValueError(f"none of the default metrics {DEFAULT_METRICS[spec.evaluation]} is in these runs")
    return drawn


def figure_table(fig_id: str, spec: FigureSpec, seeds: pl.DataFrame, meta: Meta) -> tuple[pl.DataFrame, list[str]]:
    """The figure's CSV table (module docstring) and the metrics it draws."""
    rows = cell_rows(fig_id, spec, seeds, meta)
    metrics = drawn_metrics(spec, list(dict.fromkeys(r["metric"] for r in rows)))
    if spec.form == "lr_sweep":
        rows += lr_rows(fig_id, rows, metrics[0], meta)
    types = {"n_seeds": pl.Int64} | {c: pl.Float64 for c in ("mean", "ci95", "low", "high", "paper")}
    table = pl.DataFrame(rows, schema_overrides=types, infer_schema_length=None)
    return table.select(*TABLE_COLUMNS, *meta_keys(spec)), metrics


# --- the stage -----------------------------------------------------------------------------------


def compare(fig_id: str, spec: FigureSpec, runs: list[Run], meta: Meta, out_dir: Path) -> tuple[Path, Path, Path]:
    """Write ``ID.png``, ``ID.csv``, ``ID.seeds.csv`` and their provenance into ``out_dir``."""
    if not re.fullmatch(FILE_NAME, fig_id):  # it names files: never a path that leaves out_dir
        raise ValueError(
            f"--id {fig_id!r} is not a plain name: use letters, digits, _ . - (not starting with . or -), "
            "no / (e.g. --id fig4)"
        )
    cells = list(dict.fromkeys(r.cell for r in runs))
    if set(cells) != set(spec.experiments):
        unknown, missing = sorted(set(cells) - set(spec.experiments)), sorted(set(spec.experiments) - set(cells))
        raise ValueError(
            f"--cell names do not match the spec's experiments: unknown {unknown}, without --cell {missing}"
        )
    placed = cell_meta(spec, cells, meta)
    seeds = seeds_table(fig_id, spec, runs)
    table, metrics = figure_table(fig_id, spec, seeds, placed)
    out_dir = Path(out_dir)
    png = atomic.write_bytes(out_dir / f"{fig_id}.png", render(spec, table, metrics, placed))
    csv = atomic.write_text(out_dir / f"{fig_id}.csv", table.write_csv())
    seeds_csv = atomic.write_text(out_dir / f"{fig_id}.seeds.csv", seeds.write_csv())
    provenance.record(
        out_dir,
        stage="figure",
        config={
            "figure": fig_id,
            "spec": spec.model_dump(mode="json"),
            "runs": {c: [str(r.folder) for r in runs if r.cell == c] for c in cells},
            "meta": placed,
        },
        seed=None,
        inputs={f"{r.cell}/{r.seed}/{f}": r.folder / f for r in runs for f in FILES[spec.evaluation]},
        prefix=f"{fig_id}.",
    )
    return png, csv, seeds_csv
