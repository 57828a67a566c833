"""A paper figure's cells side by side: the evaluation summary of each experiment it compares.

Each cell is one experiment's ``summary.csv`` (the eval or sft_eval stage). The figure draws, per
cell, the benchmark average at every shot count and TextCore (few-shot eval) or multiple-choice
accuracy (SFT eval); the table holds the same numbers, one row per (cell, shots).
Reads result tables only (polars); never imports torch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from mm1 import atomic, provenance  # noqa: E402

SUMMARY_COLUMNS = {"shots", "captioning_avg", "vqa_avg", "average", "textcore", "multiple_choice"}


@dataclass(frozen=True)
class Cell:
    name: str
    summary: Path


def parse_cell(text: str) -> Cell:
    """``NAME=PATH`` (the command line's --cell) -> Cell."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--cell {text!r} is not NAME=PATH/summary.csv")
    return Cell(name, Path(path))


def _summary(cell: Cell) -> pl.DataFrame:
    if not cell.summary.is_file():
        raise FileNotFoundError(f"{cell.summary} (cell {cell.name!r}) does not exist; run its eval stage first")
    df = pl.read_csv(cell.summary)
    missing = SUMMARY_COLUMNS - set(df.columns)
    if missing:
        raise ValueError(f"{cell.summary} (cell {cell.name!r}) lacks the columns {sorted(missing)}")
    return df.select(sorted(SUMMARY_COLUMNS)).with_columns(pl.lit(cell.name).alias("cell"))


def table(cells: list[Cell]) -> pl.DataFrame:
    """One row per (cell, shots): the averages the figure draws, cells in the given order."""
    if not cells:
        raise ValueError("a figure needs at least one --cell")
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ValueError(f"cell names must be unique, got {names}")
    rows = pl.concat([_summary(c) for c in cells], how="vertical_relaxed")
    return rows.select("cell", "shots", "average", "captioning_avg", "vqa_avg", "textcore", "multiple_choice")


def draw(fig_id: str, title: str, rows: pl.DataFrame) -> bytes:
    cells = list(dict.fromkeys(rows["cell"].to_list()))
    shots = sorted(set(rows["shots"].to_list()))
    extra = "multiple_choice" if rows["multiple_choice"].drop_nulls().len() else "textcore"
    series = [(f"{k}-shot average", rows.filter(pl.col("shots") == k), "average") for k in shots]
    series.append((extra.replace("_", " "), rows.filter(pl.col("shots") == shots[0]), extra))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cells) + 2), 4.2))
    for j, (label, part, column) in enumerate(series):
        values = dict(zip(part["cell"].to_list(), part[column].to_list(), strict=True))
        xs = [i + (j - (len(series) - 1) / 2) * width for i, c in enumerate(cells) if values.get(c) is not None]
        ax.bar(xs, [values[c] for c in cells if values.get(c) is not None], width, label=label)
    ax.set_xticks(range(len(cells)), cells, rotation=30, ha="right", fontsize=8)
    ax.set(title=title, ylabel="score (CIDEr x 100 / accuracy %)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def compare(fig_id: str, title: str, cells: list[Cell], out_dir: Path) -> tuple[Path, Path]:
    """Write ``<fig_id>.png`` and ``<fig_id>.csv`` (and their provenance) into ``out_dir``."""
    rows = table(cells)
    out_dir = Path(out_dir)
    png = atomic.write_bytes(out_dir / f"{fig_id}.png", draw(fig_id, title, rows))
    csv = atomic.write_text(out_dir / f"{fig_id}.csv", rows.write_csv())
    provenance.record(
        out_dir,
        stage="figure",
        config={"figure": fig_id, "title": title, "cells": [c.name for c in cells]},
        seed=None,
        inputs={c.name: c.summary for c in cells},
        prefix=f"{fig_id}.",
    )
    return png, csv
