"""The miniature study's summary figure: training loss curve beside the 0-shot CIDEr table.

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


@dataclass(frozen=True)
class FigureResult:
    png: Path
    table: Path


def _read(path: Path, columns: set[str]) -> pl.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the stage that writes it first")
    df = pl.read_csv(path)
    missing = columns - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks the columns {sorted(missing)}")
    return df


def tiny_study(metrics_csv: Path, scores_csv: Path, out_dir: Path) -> FigureResult:
    """Write ``tiny_study.png`` and ``tiny_study.csv`` (the results table) into ``out_dir``."""
    metrics = _read(metrics_csv, {"step", "loss", "lr"})
    scores = _read(scores_csv, {"run", "task", "shots", "metric", "value"})
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 3.8), width_ratios=[2, 1])
    ax_loss.plot(metrics["step"], metrics["loss"], lw=1.2, color="tab:blue")
    ax_loss.set(xlabel="optimizer step", ylabel="caption-token loss", title="Multimodal pre-training")
    ax_loss.grid(alpha=0.3)
    ax_lr = ax_loss.twinx()
    ax_lr.plot(metrics["step"], metrics["lr"], lw=0.8, color="tab:gray", ls="--")
    ax_lr.set_ylabel("learning rate", color="tab:gray")
    labels = [f"{r['task']}\n{r['shots']}-shot {r['metric']}" for r in scores.iter_rows(named=True)]
    bars = ax_score.bar(labels, scores["value"], color="tab:orange")
    ax_score.bar_label(bars, fmt="%.2f")
    ax_score.set(title="Held-out evaluation", ylabel="score")
    ax_score.set_ylim(0, max(1.0, float(scores["value"].max()) * 1.25))
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
        out_dir, stage="figure", config={}, seed=None, inputs={"metrics": metrics_csv, "scores": scores_csv}
    )
    return FigureResult(png=png, table=csv)
