"""A paper figure or table from per-seed runs: each cell's mean +- 95% CI, drawn in the paper's form.

Inputs: the figure's :class:`~mm1.config.study.FigureSpec`; per seed run ``NAME=RUN_DIR`` (a name
given again is that cell's next seed; cells in order of first appearance), RUN_DIR being the output
folder of the stage ``spec.evaluation`` names; and ``meta`` ({cell: {key: value}}), the config values
that place each cell: the spec's ``x`` and ``hue`` keys, and ``decoder_params`` for lr_sweep.

Metrics of one run (every one goes to the seeds table; ``spec.metrics`` picks those drawn):

* eval (``summary.csv``, ``scores.csv``): per shot count k "{k}-shot" (the mean over the captioning
  and VQA benchmarks: MM1's "k-shot average"), "captioning {k}-shot", "vqa {k}-shot" and, per
  benchmark, "{benchmark} {k}-shot"; "textcore". Drawn by default: textcore, 0-, 4-, 8-shot.
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
* ``ID.png`` in ``spec.form``, error bars the 95% CI, the number of seeds in the title:

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

import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from mm1 import atomic, provenance  # noqa: E402
from mm1.config.study import FigureSpec  # noqa: E402
from mm1.figures.stats import mean_ci  # noqa: E402
from mm1.models.size import LR_INTERCEPT, LR_SLOPE, peak_lr  # noqa: E402

FILES = {"eval": ("summary.csv", "scores.csv"), "sft_eval": ("summary.csv", "scores.csv"), "train": ("metrics.csv",)}
COLUMNS = {
    "summary.csv": ("shots", "captioning_avg", "vqa_avg", "average", "textcore", "multiple_choice"),
    "scores.csv": ("benchmark", "task", "shots", "value"),
    "metrics.csv": ("step", "loss", "lr"),
}
DEFAULT_METRICS = {
    "eval": ("textcore", "0-shot", "4-shot", "8-shot"),
    "sft_eval": ("sft average", "multiple choice"),
    "train": ("final loss",),
}
SEEDS_COLUMNS = ("figure", "cell", "seed", "run", "metric", "value")
TABLE_COLUMNS = ("figure", "cell", "metric", "n_seeds", "mean", "ci95", "low", "high", "paper")
TASKS = ("captioning", "vqa")  # the benchmarks scored one by one (TextCore, multiple choice: one number)
FINAL_FRACTION = 0.1  # "final loss": the mean over this last fraction of the logged steps
EVAL_AVERAGES = re.compile(r"^((captioning|vqa) )?\d+-shot$|^textcore$")  # eval's non-benchmark metrics
SFT_AVERAGES = ("sft average", "captioning", "vqa", "multiple choice")

Meta = dict[str, dict[str, Any]]


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
    out["textcore"] = next(iter(summary["textcore"].drop_nulls()), None)
    tasks = scores.filter(pl.col("task").is_in(TASKS)).sort("shots", maintain_order=True)
    return out | {f"{r['benchmark']} {r['shots']}-shot": r["value"] for r in tasks.iter_rows(named=True)}


def _sft_metrics(run: Run) -> dict[str, Any]:
    summary, scores = (_read(run, name, "sft_eval") for name in FILES["sft_eval"])
    zero = summary.filter(pl.col("shots") == 0)
    if zero.is_empty():
        raise ValueError(f"cell {run.cell!r} (seed {run.seed}): {run.folder / 'summary.csv'} has no 0-shot row")
    row = zero.row(0, named=True)
    out = {"sft average": row["average"], "captioning": row["captioning_avg"], "vqa": row["vqa_avg"]}
    out["multiple choice"] = row["multiple_choice"]
    tasks = scores.filter(pl.col("task").is_in(TASKS) & (pl.col("shots") == 0))
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


# --- drawing -------------------------------------------------------------------------------------


def _cells(table: pl.DataFrame) -> list[str]:
    return [c for c in dict.fromkeys(table["cell"].to_list()) if c != "fit"]


def _rows(table: pl.DataFrame, metric: str) -> dict[str, dict[str, Any]]:
    """Cell -> its row of ``metric``."""
    return {r["cell"]: r for r in table.filter(pl.col("metric") == metric).iter_rows(named=True)}


def _err(row: dict[str, Any]) -> float:
    return math.nan if row["ci95"] is None else row["ci95"]


def seeds_note(table: pl.DataFrame) -> str:
    """The title's note on seeds: "mean ± 95% CI over 3 seeds" (a range when cells differ)."""
    ns = sorted(set(table["n_seeds"].drop_nulls().to_list()))
    if ns[-1] < 2:
        return "1 seed per cell (no CI)"
    count = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    return f"mean ± 95% CI over {count} seeds"


def _legend(ax: plt.Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=7)


def _hues(spec: FigureSpec, cells: list[str], meta: Meta) -> list[Any]:
    """The values of spec.hue in order of first appearance (colour i = C{i})."""
    return list(dict.fromkeys(meta[c][spec.hue] for c in cells)) if spec.hue else []


def bar_layout(spec: FigureSpec, cells: list[str], meta: Meta) -> tuple[dict[str, float], list[str], float]:
    """Each cell's bar position, the tick label of each group (at 0, 1, ...) and the bar width.
    With spec.x, cells group by their x values (else each cell is a group), ordered by hue within."""
    groups: dict[str, list[str]] = {}
    for cell in cells:
        label = f"({', '.join(str(meta[cell][k]) for k in spec.x)})" if spec.x else cell
        groups.setdefault(label, []).append(cell)
    hues = _hues(spec, cells, meta)
    width = 0.8 / max(len(members) for members in groups.values())
    xs = {}
    for i, members in enumerate(groups.values()):
        if spec.hue:
            members = sorted(members, key=lambda c: hues.index(meta[c][spec.hue]))
        xs |= {cell: i + (j - (len(members) - 1) / 2) * width for j, cell in enumerate(members)}
    return xs, list(groups), width


def draw_bars(spec: FigureSpec, table: pl.DataFrame, metrics: list[str], meta: Meta) -> Figure:
    cells = _cells(table)
    xs, ticks, width = bar_layout(spec, cells, meta)
    hues = _hues(spec, cells, meta)
    fig, axes = plt.subplots(1, len(metrics), figsize=(len(metrics) * max(3.5, 0.45 * len(cells) + 1.5), 4.4))
    for ax, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        for cell, row in _rows(table, metric).items():
            colour, label = "C0", None
            if spec.hue:
                hue = meta[cell][spec.hue]
                colour, label = f"C{hues.index(hue)}", f"{spec.hue.rsplit('.', 1)[-1]} = {hue}"
            ax.bar(xs[cell], row["mean"], width, yerr=_err(row), capsize=3, color=colour, label=label)
            if row["paper"] is not None:
                ax.plot(xs[cell], row["paper"], "kD", markersize=5, label="paper")
        ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right", fontsize=8)
        if spec.x:
            ax.set_xlabel(f"({', '.join(k.rsplit('.', 1)[-1] for k in spec.x)})", fontsize=8)
        ax.set_title(metric, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        _legend(ax)
    return fig


def _size(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _law(slope: float, intercept: float) -> str:
    return f"ln lr = {slope:.4g} ln N {'-' if intercept < 0 else '+'} {abs(intercept):.4g}"


def draw_lr_sweep(spec: FigureSpec, table: pl.DataFrame, metrics: list[str], meta: Meta) -> Figure:

    loss, lrs = _rows(table, metrics[0]), _rows(table, "peak lr")
    best = {r["decoder_params"]: r for r in _rows(table, "best lr").values()}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for i, n in enumerate(sorted(best)):
        cells = sorted((c for c in loss if meta[c]["decoder_params"] == n), key=lambda c: lrs[c]["mean"])
        xs, ys = [lrs[c]["mean"] for c in cells], [loss[c]["mean"] for c in cells]
        yerr = [_err(loss[c]) for c in cells]
        left.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, color=f"C{i}", label=f"N = {_size(n)}")
        left.plot(best[n]["mean"], loss[best[n]["cell"]]["mean"], "*", markersize=14, color=f"C{i}")
    left.set(xscale="log", xlabel="peak learning rate", ylabel=metrics[0], title=f"{metrics[0]} vs peak LR (★ best)")
    ns = sorted(best)
    right.plot(ns, [best[n]["mean"] for n in ns], "ko", label="best LR (ours)")
    grid = np.geomspace(ns[0], ns[-1], 50)
    fit = _rows(table, "slope").get("fit"), _rows(table, "intercept").get("fit")
    if fit[0] is not None:
        slope, intercept = fit[0]["mean"], fit[1]["mean"]
        right.plot(grid, np.exp(slope * np.log(grid) + intercept), label=f"ours: {_law(slope, intercept)}")
    right.plot(grid, [peak_lr(n) for n in grid], "k--", label=f"MM1: {_law(LR_SLOPE, LR_INTERCEPT)}")
    right.set(xscale="log", yscale="log", xlabel="decoder parameters N", ylabel="best peak LR", title="best LR vs N")
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        _legend(ax)
    return fig


def _num(value: float) -> str:
    """Scores (0-100) with one decimal; losses and learning rates with three significant digits."""
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _estimate(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    return _num(row["mean"]) if row["ci95"] is None else f"{_num(row['mean'])} ± {_num(row['ci95'])}"


def draw_benchmarks(spec: FigureSpec, table: pl.DataFrame, metrics: list[str], meta: Meta) -> Figure:
    columns = [_rows(table, m) for m in metrics]
    labels, text = [], []
    for cell in _cells(table):
        labels.append(cell)
        text.append([_estimate(col.get(cell)) for col in columns])
        paper = spec.paper.get(cell, {})
        if any(m in paper for m in metrics):
            labels.append(f"{cell} (paper)")
            text.append([_num(paper[m]) if m in paper else "–" for m in metrics])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.95 * len(metrics) + 2), 0.32 * len(labels) + 1.6))
    ax.axis("off")
    cells = ax.table(cellText=text, rowLabels=labels, colLabels=metrics, loc="center", cellLoc="center")
    cells.auto_set_font_size(False)
    cells.set_fontsize(7)
    cells.scale(1, 1.4)
    return fig


def _number(meta: Meta, cell: str, key: str) -> float:
    value = meta[cell][key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"form sweep plots against {key}, but cell {cell!r} has {key} = {value!r}, not a number")
    return float(value)


def draw_sweep(spec: FigureSpec, table: pl.DataFrame, metrics: list[str], meta: Meta) -> Figure:
    if not spec.x:
        raise ValueError("form sweep needs spec.x: the config keys to plot the metric against")
    rows, first = _rows(table, metrics[0]), _cells(table)[0]
    fig, axes = plt.subplots(1, len(spec.x), figsize=(5 * len(spec.x), 4.4))
    for ax, key in zip(np.atleast_1d(axes), spec.x, strict=True):
        others = [k for k in spec.x if k != key]
        cells = [c for c in rows if all(meta[c][k] == meta[first][k] for k in others)]
        cells.sort(key=lambda c: _number(meta, c, key))
        xs, ys = [_number(meta, c, key) for c in cells], [rows[c]["mean"] for c in cells]
        ax.errorbar(xs, ys, yerr=[_err(rows[c]) for c in cells], marker="o", capsize=3, label="ours")
        for cell, x, y in zip(cells, xs, ys, strict=True):
            ax.annotate(cell, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            if rows[cell]["paper"] is not None:
                ax.plot(x, rows[cell]["paper"], "kD", markersize=5, label="paper")
        fixed = ", ".join(f"{k} = {meta[first][k]}" for k in others)
        ax.set(xlabel=key, ylabel=metrics[0], title=fixed)
        ax.margins(x=0.15)
        ax.grid(alpha=0.3)
        _legend(ax)
    return fig


DRAW: dict[str, Callable[[FigureSpec, pl.DataFrame, list[str], Meta], Figure]] = {
    "bars": draw_bars,
    "lr_sweep": draw_lr_sweep,
    "benchmarks": draw_benchmarks,
    "sweep": draw_sweep,
}


def render(spec: FigureSpec, table: pl.DataFrame, metrics: list[str], meta: Meta) -> bytes:
    """The figure in ``spec.form`` as PNG bytes, titled with the spec's title and the seeds."""
    fig = DRAW[spec.form](spec, table, metrics, meta)
    fig.suptitle(f"{spec.title}\n{seeds_note(table)}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


# --- the stage -----------------------------------------------------------------------------------


def compare(fig_id: str, spec: FigureSpec, runs: list[Run], meta: Meta, out_dir: Path) -> tuple[Path, Path, Path]:
    """Write ``ID.png``, ``ID.csv``, ``ID.seeds.csv`` and their provenance into ``out_dir``."""
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
