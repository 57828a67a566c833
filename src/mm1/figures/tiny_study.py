"""The miniature study's summary figure: training loss curve beside the few-shot benchmark scores.

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
from mm1.figures.csv_io import read_table  # noqa: E402


@dataclass(frozen=True)
class FigureResult:
    png: Path
    table: Path


def _read(path: Path, columns: set[str]) -> pl.DataFrame:
    return read_table(path, sorted(columns), str(path), "run the stage that writes it first")


def _shot_bars(ax, scores: pl.DataFrame) -> None:
    """Grouped bars: per benchmark (and TextCore), one bar per shot count, as MM1's Table 3 reads."""
    decoded = pl.col("task").is_in(["captioning", "vqa"]) & pl.col("metric").is_in(["CIDEr", "accuracy"])
    tasks = scores.filter(decoded | (pl.col("benchmark") == "textcore"))
    names = list(dict.fromkeys(tasks["benchmark"].to_list()))
    shots = sorted(set(tasks["shots"].to_list()))
    width = 0.8 / max(1, len(shots))
    for j, k in enumerate(shots):
        rows = {r["benchmark"]: r["value"] for r in tasks.filter(pl.col("shots") == k).iter_rows(named=True)}
        xs = [i + (j - (len(shots) - 1) / 2) * width for i, n in enumerate(names) if n in rows]
        ax.bar(xs, [rows[n] for n in names if n in rows], width, label=f"{k}-shot")
    metric = {r["benchmark"]: r["metric"] for r in tasks.iter_rows(named=True)}
    ax.set_xticks(range(len(names)), [f"{n}\n{metric[n]}" for n in names], fontsize=8)
    ax.set(title="Held-out evaluation (CIDEr x 100, accuracy %)", ylabel="score")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def tiny_study(metrics_csv: Path, scores_csv: Path, out_dir: Path) -> FigureResult:
    """Write ``tiny_study.png`` and ``tiny_study.csv`` (the results table) into ``out_dir``."""
    metrics = _read(metrics_csv, {"step", "loss", "lr"})
    scores = _read(scores_csv, {"run", "benchmark", "task", "shots", "metric", "value"})
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(14, 4.2), width_ratios=[1, 1.6])
    ax_loss.plot(metrics["step"], metrics["loss"], lw=1.2, color="tab:blue")
    ax_loss.set(xlabel="optimizer step", ylabel="caption-token loss", title="Multimodal pre-training")
    ax_loss.grid(alpha=0.3)
    ax_lr = ax_loss.twinx()
    ax_lr.plot(metrics["step"], metrics["lr"], lw=0.8, color="tab:gray", ls="--")
    ax_lr.set_ylabel("learning rate", color="tab:gray")
    _shot_bars(ax_score, scores)
    fig.suptitle(f"mm1 miniature study: {scores['run'][0]}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    out_dir = Path(out_dir)
    png = atomic.write_bytes(out_dir / "tiny_study.png", buf.getvalue())
    final = metrics.tail(1)
    table = scores.with_columns(
        pl.lit(float(final["loss"][0])).alias("final_train_loss"),
        pl.lit(float(metrics["loss"][0])).alias("first_train_loss"),
    )
    csv = atomic.write_text(out_dir / "tiny_study.csv", table.write_csv())
    provenance.record(
        out_dir,
        stage="figure",
        config={},
        seed=None,
        inputs={"metrics": metrics_csv, "scores": scores_csv},
        prefix="tiny_study.",
    )
    return FigureResult(png=png, table=csv)
