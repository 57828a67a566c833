"""The pilot: per-run noise of the declared metrics, and the seeds per arm that follow from it.

Input: the ``<fig>.seeds.csv`` of a pilot figure (``study.pilot.figure``: a few cells run with more
seeds than the study, ``study.figures.<id>.seeds``). For each metric of ``study.pilot.metrics``:

* ``sd_run`` -- the per-run standard deviation: the pooled within-cell sd over seeds,
  sqrt(sum_c (n_c - 1) s_c^2 / sum_c (n_c - 1)), on sum_c (n_c - 1) degrees of freedom.
* ``sd_diff`` -- the sd of the per-seed differences between the first two cells (seed s of both
  shares what a seed fixes: data order, initialisation), the noise a ``paired`` check sees;
  ``rho`` = 1 - sd_diff^2 / (2 sd_run^2), the correlation that pairing exploits.
* for every target effect delta of ``study.pilot.effects``, the smallest n (seeds per arm) whose
  minimum detectable effect at two-sided alpha 0.05 and power 0.80 is at most delta:
  Welch (two independent arms of n runs): (t_{0.975,df} + t_{0.80,df}) * sd_run * sqrt(2 / n) <= delta
  with df = 2 (n - 1); paired: (t_{0.975,n-1} + t_{0.80,n-1}) * sd_diff / sqrt(n) <= delta.
  This is the textbook n = 2 ((t + z) sd / delta)^2 solved with t quantiles, so small n is honest.
* the MDE at the study's seed count (``study.seeds``) for both designs.

The pilot's sd is itself an estimate from few runs: the report gives its 95% CI (chi-square
limits approximated by the Wilson-Hilferty cube root) so that the reader sees how far the
planned n could be off. Reads result tables only (polars); never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from mm1 import atomic, provenance
from mm1.figures.csv_io import read_table
from mm1.figures.stats import mde

MAX_SEEDS = 1000
SEEDS_COLUMNS = ("cell", "seed", "metric", "value")  # what the analysis reads of a <fig>.seeds.csv
Z975 = 1.959963984540054


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """Pooled within-group sd and its degrees of freedom (groups of one value add nothing)."""
    ss, df = 0.0, 0
    for values in groups:
        n = len(values)
        if n < 2:
            continue
        mean = sum(values) / n
        ss += sum((v - mean) ** 2 for v in values)
        df += n - 1
    if df == 0:
        raise ValueError("a pooled sd needs a group of at least 2 values")
    return math.sqrt(ss / df), df


def sd_interval(sd: float, df: int) -> tuple[float, float]:
    """Approximate 95% CI of a population sd from a sample sd on ``df`` degrees of freedom:
    sd * sqrt(df / chi2_{q, df}), chi2 quantiles by Wilson-Hilferty."""

    def chi2(q_z: float) -> float:
        a = 2.0 / (9.0 * df)
        return df * (1.0 - a + q_z * math.sqrt(a)) ** 3

    return sd * math.sqrt(df / chi2(Z975)), sd * math.sqrt(df / max(chi2(-Z975), 1e-12))


def mde_welch(sd: float, n: int) -> float:
    """MDE of a Welch comparison of two arms of n runs with per-run sd ``sd`` (equal variances)."""
    return mde(sd * math.sqrt(2.0 / n), 2 * (n - 1))


def mde_paired(sd_diff: float, n: int) -> float:
    """MDE of a paired comparison over n seeds whose differences have sd ``sd_diff``."""
    return mde(sd_diff / math.sqrt(n), n - 1)


def seeds_needed(delta: float, sd: float, paired: bool) -> int | None:
    """The smallest n >= 2 whose MDE is <= delta (None beyond MAX_SEEDS)."""
    if delta <= 0:
        raise ValueError(f"a target effect must be > 0, got {delta}")
    if sd == 0:
        return 2
    fn = mde_paired if paired else mde_welch
    for n in range(2, MAX_SEEDS + 1):
        if fn(sd, n) <= delta:
            return n
    return None


def analyse(frame: pl.DataFrame, metrics: Sequence[str], effects: Sequence[float], seeds: int) -> pl.DataFrame:
    """One row per metric: sd_run (+ CI), sd_diff, rho, MDE at ``seeds``, seeds needed per effect."""
    cells = list(dict.fromkeys(frame["cell"].to_list()))
    if len(cells) < 2:
        raise ValueError(f"the pilot needs at least 2 cells, has {cells}")
    rows = []
    for metric in metrics:
        sub = frame.filter(pl.col("metric") == metric)
        if sub.is_empty():
            known = ", ".join(sorted(set(frame["metric"].to_list())))
            raise ValueError(f"pilot: no metric {metric!r} (metrics: {known})")
        by_cell = {c: dict(zip(g["seed"].to_list(), g["value"].to_list(), strict=True))
                   for c in cells for g in [sub.filter(pl.col("cell") == c)]}  # fmt: skip
        sd_run, df = pooled_sd([list(v.values()) for v in by_cell.values()])
        low, high = sd_interval(sd_run, df)
        first, second = by_cell[cells[0]], by_cell[cells[1]]
        common = sorted(set(first) & set(second))
        if len(common) < 2:
            raise ValueError(f"pilot: cells {cells[0]!r} and {cells[1]!r} share fewer than 2 seeds")
        diffs = [first[s] - second[s] for s in common]
        sd_diff, _ = pooled_sd([diffs])
        rho = 1.0 - sd_diff**2 / (2 * sd_run**2) if sd_run else math.nan
        row = {"metric": metric, "n_runs": sub.height, "sd_run": sd_run, "sd_run_low": low, "sd_run_high": high,
               "df": df, "sd_diff": sd_diff, "rho": rho, "seeds": seeds,
               "mde_welch": mde_welch(sd_run, seeds), "mde_paired": mde_paired(sd_diff, seeds)}  # fmt: skip
        for delta in effects:
            row[f"n_welch_{delta:g}"] = seeds_needed(delta, sd_run, paired=False)
            row[f"n_paired_{delta:g}"] = seeds_needed(delta, sd_diff, paired=True)
        rows.append(row)
    return pl.DataFrame(rows)


def markdown(table: pl.DataFrame, cells: list[str], effects: Sequence[float], seeds: int) -> str:
    out = [
        "# Pilot: per-run noise and the seeds per arm it implies",
        "",
        f"Cells {', '.join(cells)}; sd_run = pooled within-cell sd over seeds (95% CI), sd_diff = sd of the",
        f"per-seed differences {cells[0]} - {cells[1]} (what a paired check sees), rho = 1 - sd_diff^2 / (2 sd_run^2).",
        f"MDE at two-sided alpha 0.05, power 0.80, with the study's {seeds} seeds per arm; then the seeds per arm",
        "needed for each target effect: Welch needs (t_0.975 + t_0.80) * sd_run * sqrt(2/n) <= effect (df 2n - 2),",
        "paired needs (t_0.975 + t_0.80) * sd_diff / sqrt(n) <= effect (df n - 1).",
        "",
        "| metric | runs | sd_run (95% CI) | sd_diff | rho | MDE Welch | MDE paired | "
        + " | ".join(f"n for {d:g} (Welch / paired)" for d in effects)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(effects),
    ]

    def n(v: int | None) -> str:
        return f">{MAX_SEEDS}" if v is None else str(v)

    for r in table.iter_rows(named=True):
        needs = " | ".join(f"{n(r[f'n_welch_{d:g}'])} / {n(r[f'n_paired_{d:g}'])}" for d in effects)
        out.append(
            f"| {r['metric']} | {r['n_runs']} | {r['sd_run']:.2f} ({r['sd_run_low']:.2f}-{r['sd_run_high']:.2f}) "
            f"| {r['sd_diff']:.2f} | {r['rho']:+.2f} | {r['mde_welch']:.2f} | {r['mde_paired']:.2f} | {needs} |"
        )
    return "\n".join(out) + "\n"


def read_seeds(path: Path) -> pl.DataFrame:
    """The pilot figure's <fig>.seeds.csv; errors name the file and how to remake it."""
    remake = "run mm1 compare for the pilot figure first"
    frame = read_table(path, SEEDS_COLUMNS, "--seeds", remake)
    return frame.with_columns(pl.col("cell", "metric").cast(pl.String))


def pilot(seeds_csv: Path, metrics: Sequence[str], effects: Sequence[float], seeds: int, out_dir: Path) -> Path:
    """Write ``power.csv`` and ``power.md`` (and provenance) into ``out_dir``; returns the md."""
    seeds_csv = Path(seeds_csv)
    frame = read_seeds(seeds_csv)
    table = analyse(frame, metrics, effects, seeds)
    cells = list(dict.fromkeys(frame["cell"].to_list()))
    out_dir = Path(out_dir)
    atomic.write_text(out_dir / "power.csv", table.write_csv())
    md = atomic.write_text(out_dir / "power.md", markdown(table, cells, effects, seeds))
    provenance.record(out_dir, stage="pilot",
                      config={"metrics": list(metrics), "effects": list(effects), "seeds": seeds},
                      seed=None, inputs={"seeds": seeds_csv}, prefix="power.")  # fmt: skip
    return md
