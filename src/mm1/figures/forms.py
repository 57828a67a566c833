"""How each paper figure is drawn (the ``form`` of a FigureSpec), from the table mm1.figures.compare
builds: one row per (cell, metric) with mean, 95% CI and the paper's value.

* bars: a panel per metric, a bar per cell with its CI, coloured by ``hue`` and grouped by ``x``;
* lr_sweep: final loss against peak LR per decoder size, then each size's best LR against N with
  our fitted law and MM1's;
* benchmarks: a table of every benchmark per cell, "mean ± CI" (and the paper's value);
* sweep: the first metric against each ``x`` key (a line per ``hue`` value, e.g. Fig 7's image grid).

Matplotlib (Agg) only; never imports torch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mm1.config.study import FigureSpec  # noqa: E402
from mm1.models.size import LR_FIT_SIZES, LR_INTERCEPT, LR_SLOPE, peak_lr  # noqa: E402

Meta = dict[str, dict[str, Any]]


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
    """A parameter count in three digits: 349k, 1.23M, 302M, 1.2B."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _law(slope: float, intercept: float) -> str:
    return f"ln lr = {slope:.4g} ln N {'-' if intercept < 0 else '+'} {abs(intercept):.4g}"


def mm1_law_label(ns: list[float]) -> str:
    """The legend of MM1's law over decoder sizes ``ns``: where they lie against the sizes MM1 fitted
    it on (nominal sizes, so a 8.98M decoder counts as MM1's 9M)."""
    lo, hi = LR_FIT_SIZES[0], LR_FIT_SIZES[-1]
    fitted = f"fitted on {_size(lo)}-{_size(hi)}"
    if max(ns) < lo / 1.5:
        where = f"extrapolated below the sizes it was {fitted}"
    elif min(ns) > hi * 1.5:
        where = f"extrapolated above the sizes it was {fitted}"
    elif min(ns) >= lo / 1.5 and max(ns) <= hi * 1.5:
        where = f"{fitted}, the sizes here"
    else:
        where = f"{fitted}; partly extrapolated here"
    return f"MM1's law, {where}:\n{_law(LR_SLOPE, LR_INTERCEPT)}"


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
    # MM1 fitted its law on decoders of 9M-1.2B (s); the miniature's have 0.2-1.3M parameters.
    right.plot(grid, [peak_lr(n) for n in grid], "k--", label=mm1_law_label(ns))
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


AXIS_LABELS = {"effective_resolution": "effective SFT resolution (px × image grid)"}


def draw_sweep(spec: FigureSpec, table: pl.DataFrame, metrics: list[str], meta: Meta) -> Figure:
    if not spec.x:
        raise ValueError("form sweep needs spec.x: the config keys to plot the metric against")
    rows, first = _rows(table, metrics[0]), _cells(table)[0]
    fig, axes = plt.subplots(1, len(spec.x), figsize=(5 * len(spec.x), 4.4))
    for ax, key in zip(np.atleast_1d(axes), spec.x, strict=True):
        others = [k for k in spec.x if k != key]
        cells = [c for c in rows if all(meta[c][k] == meta[first][k] for k in others)]
        cells.sort(key=lambda c: _number(meta, c, key))
        hues = _hues(spec, cells, meta) or [None]  # a line per hue value (Fig 7: interpolation vs splitting)
        for i, hue in enumerate(hues):
            line = [c for c in cells if hue is None or meta[c][spec.hue] == hue]
            label = "ours" if hue is None else f"ours, {spec.hue.rsplit('.', 1)[-1]} = {hue}"
            xs, ys = [_number(meta, c, key) for c in line], [rows[c]["mean"] for c in line]
            yerr = [_err(rows[c]) for c in line]
            ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, color=f"C{i}", label=label)
            for cell, x, y in zip(line, xs, ys, strict=True):
                ax.annotate(cell, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
                if rows[cell]["paper"] is not None:
                    ax.plot(x, rows[cell]["paper"], "kD", markersize=5, label="paper")
        fixed = ", ".join(f"{k} = {meta[first][k]}" for k in others)
        ax.set(xlabel=AXIS_LABELS.get(key, key), ylabel=metrics[0], title=fixed)
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
