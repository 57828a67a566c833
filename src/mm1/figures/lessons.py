"""The paper's lessons (shared/MM1.md), confirmed or refuted: each check's effect, CI, MDE, p and verdict.

Input: the ``<fig>.seeds.csv`` tables of ``mm1 compare`` (columns figure, cell, seed, run, metric,
value; one row per cell, seed and metric). A check (:class:`mm1.config.study.LessonCheck`) compares
cells of one figure on the one metric it declares. Per seed s a side's value is the mean over its
cells: a_s = mean of the a cells' values at seed s (likewise b_s, c_s, d_s); every cell of a check
has the same seeds. With c/d the per-seed values compared are x_s = a_s - b_s and y_s = c_s - d_s.

The check's ``test`` names its design (chosen in config/study.yaml from what a seed shares, before
any result):

* ``paired`` -- seed s of both sides shares the packed data order and the initialisation, so the
  per-seed differences d_s = a_s - b_s (or x_s - y_s) are the replicates: effect = mean(d),
  se = sd(d) / sqrt(n), df = n - 1. Valid however weak the correlation (it only costs df).
* ``welch`` -- the sides are independent runs: effect = mean(a) - mean(b) (or mean(x) - mean(y)),
  se = sqrt(var(a)/n + var(b)/n), df by Welch-Satterthwaite. Always valid; a positive correlation
  between the sides (a shared cell, a shared init) makes it conservative.
* ``factorial`` -- the lesson's ``factors`` give each cell of the figure its levels (fig4:
  connector kind x tokens x resolution). Ordinary least squares over every (cell, seed) value of
  those cells: y = mu + main effect of each factor + seed block + e (treatment coding, no
  interactions, so interactions fall into the residual and make the CI wider, not narrower). The
  check's a and b are all cells at two levels of one factor; the effect is the difference of the two
  levels' coefficients, se from the pooled residual variance s^2 = RSS / (N - p), df = N - p.

Every check reports: the 95% CI effect +- t_{0.975,df} * se; the two-sided p of effect = 0 from the
Student-t CDF; the minimum detectable effect at two-sided alpha 0.05 and power 0.80,
MDE = (t_{0.975,df} + t_{0.80,df}) * se (:mod:`mm1.figures.stats`).

Multiplicity: the p-values of the directional checks (a>b, a<b) of the whole report form one Holm
family (adjusted p in ``p_holm``; checks without a CI are left out); margin checks (a~b, a>=b) are judged by their 95% CI (a TOST at
2.5% per side, conservative) and are not in the family.

Verdict of a check, with CI = [low, high] (for a<b mirrored, so "the paper's side" is > 0):

* ``a>b``/``a<b``: "agrees" if p_holm < 0.05 and low > 0; "disagrees" if p_holm < 0.05 and high < 0;
  else "inconclusive".
* ``a~b`` with margin m (equivalence): "disagrees" if the CI lies wholly beyond +-m (low > m or
  high < -m); "agrees" if it lies within [-m, m]; else "insufficient precision" when the CI's
  half-width exceeds m (it could never fit in the margin), otherwise "inconclusive".
* ``a>=b`` with margin m (non-inferiority): "agrees" if low > -m; "disagrees" if high < -m; else
  "insufficient precision" when the half-width exceeds m, otherwise "inconclusive".
* No CI (1 seed, or a saturated factorial design): "inconclusive (1 seed)" / "inconclusive (no df)".

Verdict of a lesson: "agrees" if every check agrees, "disagrees" if every check disagrees, "mixed" if
some agree and some disagree, otherwise "inconclusive". A check's ``note`` travels to the report
(Table 1: its arms share one trained encoder across seeds, so its CIs are conditional on that
encoder). Reads result tables only (polars, numpy); never imports torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import TypeAdapter, ValidationError

from mm1 import atomic, provenance
from mm1.config.study import DIRECTIONAL, LessonCheck, LessonSpec, Levels, factorial_contrast
from mm1.figures.csv_io import read_table
from mm1.figures.stats import ALPHA, POWER, Effect, factorial, holm, paired, welch

SEEDS_COLUMNS = ("figure", "cell", "seed", "run", "metric", "value")
LESSONS = TypeAdapter(dict[str, LessonSpec])


def parse_seeds(texts: list[str]) -> dict[str, Path]:
    """``FIG=PATH`` items (the command line's --seeds) -> {figure id: seeds.csv}."""
    seeds: dict[str, Path] = {}
    for text in texts:
        fig, sep, path = text.partition("=")
        if not sep or not fig or not path:
            raise ValueError(f"--seeds {text!r} is not FIG=PATH/<fig>.seeds.csv")
        if fig in seeds:
            raise ValueError(f"--seeds names figure {fig!r} twice")
        seeds[fig] = Path(path)
    return seeds


def load_lessons(text: str) -> dict[str, LessonSpec]:
    """The --lessons JSON ({lesson id: LessonSpec}, as study.lessons), validated; errors name the field."""
    try:
        lessons = LESSONS.validate_python(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ValueError(f"--lessons is not JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<top>'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"--lessons: invalid lessons: {problems}") from None
    if not lessons:
        raise ValueError("--lessons holds no lessons")
    return lessons


def verdict(est: Effect, expect: str, margin: float = 0.0, p_holm: float = math.nan) -> str:
    """A check's verdict from its effect, CI and (directional checks) Holm-adjusted p (module docstring)."""
    if math.isnan(est.se):
        return "inconclusive (1 seed)" if est.n < 2 else "inconclusive (no df)"
    low, high = (-est.high, -est.low) if expect == "a<b" else (est.low, est.high)
    if expect in DIRECTIONAL:
        if not p_holm < ALPHA:
            return "inconclusive"
        return "agrees" if low > 0 else "disagrees" if high < 0 else "inconclusive"
    if expect == "a~b":
        if low > margin or high < -margin:
            return "disagrees"
        if -margin <= low and high <= margin:
            return "agrees"
    else:  # a>=b
        if low > -margin:
            return "agrees"
        if high < -margin:
            return "disagrees"
    return "insufficient precision" if est.ci95 > margin else "inconclusive"


def lesson_verdict(verdicts: list[str]) -> str:
    """All agree -> agrees; all disagree -> disagrees; some of each -> mixed; else inconclusive."""
    if all(v == "agrees" for v in verdicts):
        return "agrees"
    if all(v == "disagrees" for v in verdicts):
        return "disagrees"
    return "mixed" if "agrees" in verdicts and "disagrees" in verdicts else "inconclusive"


def comparison(check: LessonCheck, contrast: tuple[str, str, str] | None = None, n_cells: int = 0) -> str:
    """The check in words: "A vs B", "(A - B) vs (C - D)", or a factorial contrast; several cells
    read "mean(x, y)"."""

    def side(cells: list[str]) -> str:
        return cells[0] if len(cells) == 1 else f"mean({', '.join(cells)})"

    if contrast:
        factor, level_a, level_b = contrast
        return f"{factor} {level_a} vs {level_b} (main effect over {n_cells} cells)"
    if check.c:
        return f"({side(check.a)} - {side(check.b)}) vs ({side(check.c)} - {side(check.d)})"
    return f"{side(check.a)} vs {side(check.b)}"


def _read(path: Path, where: str) -> pl.DataFrame:
    frame = read_table(path, SEEDS_COLUMNS, where, "run mm1 compare for that figure first")
    return frame.with_columns(pl.col("cell", "metric").cast(pl.String))


def _cell_values(frame: pl.DataFrame, cell: str, metric: str, where: str) -> dict[int, float]:
    """Seed -> the cell's value of ``metric`` (one row per seed)."""
    rows = frame.filter(pl.col("cell") == cell)
    if rows.is_empty():
        known = ", ".join(dict.fromkeys(frame["cell"].to_list()))
        raise ValueError(f"{where}: no cell {cell!r} (cells: {known})")
    rows = rows.filter(pl.col("metric") == metric).drop_nulls("value")
    if rows.is_empty():
        raise ValueError(f"{where}: cell {cell!r} has no value of metric {metric!r}")
    seeds = rows["seed"].cast(pl.Int64).to_list()
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{where}: cell {cell!r} has several rows of metric {metric!r} for one seed")
    return dict(zip(seeds, rows["value"].cast(pl.Float64).to_list(), strict=True))


def effect(
    frame: pl.DataFrame, check: LessonCheck, where: str, factors: dict[str, dict[str, Levels]] | None = None
) -> Effect:
    """The check's effect and standard error by its ``test`` (the statistics of the module docstring)."""
    metrics = set(frame["metric"].to_list())
    if check.metric not in metrics:
        raise ValueError(f"{where}: no metric {check.metric!r} (metrics: {', '.join(sorted(metrics))})")
    design = (factors or {}).get(check.figure, {}) if check.test == "factorial" else {}
    names = dict.fromkeys([*check.a, *check.b, *check.c, *check.d, *design])
    cells = {c: _cell_values(frame, c, check.metric, where) for c in names}
    first, seeds = next(iter(cells)), sorted(next(iter(cells.values())))
    for cell, values in cells.items():
        if sorted(values) != seeds:
            raise ValueError(f"{where}: cell {cell!r} has seeds {sorted(values)} but cell {first!r} has {seeds}")
    if check.test == "factorial":
        factor, level_a, level_b = factorial_contrast(factors or {}, check, where)
        obs = [(cells[c][s], {f: str(v) for f, v in design[c].items()}, s) for c in design for s in seeds]
        y, levels, blocks = (list(col) for col in zip(*obs, strict=True))
        return factorial(y, levels, blocks, factor, level_a, level_b)

    def side(cells_of_side: list[str]) -> list[float]:  # per seed: the mean over the side's cells
        return [sum(cells[c][s] for c in cells_of_side) / len(cells_of_side) for s in seeds]

    a, b = side(check.a), side(check.b)
    if check.c:
        c, d = side(check.c), side(check.d)
        a, b = [x - y for x, y in zip(a, b, strict=True)], [x - y for x, y in zip(c, d, strict=True)]
    return paired(a, b) if check.test == "paired" else welch(a, b)


def evaluate(lessons: dict[str, LessonSpec], seeds: dict[str, Path]) -> pl.DataFrame:
    """One row per check: its test, effect, se, df, CI, MDE, raw and Holm p, verdict and its lesson's verdict."""
    frames: dict[str, pl.DataFrame] = {}
    rows: list[dict[str, Any]] = []
    estimates: list[Effect] = []
    for lesson, spec in lessons.items():
        for i, check in enumerate(spec.checks, start=1):
            where = f"lesson {lesson!r}, check {i}, figure {check.figure!r}"
            if check.figure not in seeds:
                given = ", ".join(seeds) or "none"
                raise ValueError(f"{where}: no --seeds {check.figure}=PATH given (given: {given})")
            where += f" ({seeds[check.figure]})"
            if check.figure not in frames:
                frames[check.figure] = _read(seeds[check.figure], where)
            est = effect(frames[check.figure], check, where, spec.factors)
            contrast = factorial_contrast(spec.factors, check, where) if check.test == "factorial" else None
            estimates.append(est)
            rows.append(
                {
                    "lesson": lesson,
                    "statement": spec.statement,
                    "check": i,
                    "figure": check.figure,
                    "metric": check.metric,
                    "test": check.test,
                    "comparison": comparison(check, contrast, len(spec.factors.get(check.figure, {}))),
                    "expect": check.expect,
                    "margin": check.margin if check.expect not in DIRECTIONAL else None,
                    "n_seeds": est.n,
                    "effect": est.effect,
                    "se": est.se,
                    "df": est.df,
                    "ci95": est.ci95,
                    "low": est.low,
                    "high": est.high,
                    "mde": est.mde,
                    "p": est.p,
                    "p_holm": None,
                    "note": check.note,
                }
            )
    family = [i for i, r in enumerate(rows) if r["expect"] in DIRECTIONAL and not math.isnan(estimates[i].p)]
    for i, p in zip(family, holm([estimates[i].p for i in family]), strict=True):
        rows[i]["p_holm"] = p
    for row, est in zip(rows, estimates, strict=True):
        p_holm = math.nan if row["p_holm"] is None else row["p_holm"]
        row["verdict"] = verdict(est, row["expect"], row["margin"] or 0.0, p_holm)
    for lesson in lessons:
        overall = lesson_verdict([r["verdict"] for r in rows if r["lesson"] == lesson])
        for r in rows:
            if r["lesson"] == lesson:
                r["lesson_verdict"] = overall
    return pl.DataFrame(rows, infer_schema_length=None)


def _expected(check: LessonCheck) -> str:
    """The paper's claim about the effect, for the report."""
    return {"a>b": "> 0", "a<b": "< 0", "a~b": f"within ±{check.margin:.2f}"}.get(
        check.expect, f"> -{check.margin:.2f}"
    )


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "—" if value is None or math.isnan(value) else format(value, fmt)


def markdown(lessons: dict[str, LessonSpec], table: pl.DataFrame) -> str:
    """The report: per lesson its verdict, a table of its checks, their descriptions and notes; a summary."""
    family = table.filter(pl.col("p_holm").is_not_null()).height
    out = [
        "# MM1's lessons in miniature",
        "",
        "Each effect is a - b (or (a - b) - (c - d)) over seeds with its 95% CI, by the check's test: paired "
        "(per-seed differences: the cells share data order and init), welch (independent arms) or factorial "
        "(a main effect of the figure's OLS model with seed blocks and the pooled residual variance).",
        f"MDE: the smallest effect the check detects with power {POWER:.2f} at two-sided alpha {ALPHA} "
        "((t_0.975 + t_0.80) × SE). p: two-sided, raw and Holm-adjusted over the "
        f"{family} directional checks of this report.",
        "A directional check agrees when its Holm-adjusted p < 0.05 and its effect lies on the paper's side; "
        "an a~b check agrees when its CI lies within ±margin, an a>=b check when its CI lies above -margin; "
        'either says "insufficient precision" when its CI\'s half-width exceeds the margin.',
    ]
    summary = []
    for lesson, spec in lessons.items():
        rows = table.filter(pl.col("lesson") == lesson).to_dicts()
        overall = rows[0]["lesson_verdict"]
        summary.append(f"| {lesson} | {overall} |")
        out += ["", f"## Lesson {lesson}: {spec.statement} — {overall}", ""]
        out += [
            "| check | comparison | metric | test | effect ± 95% CI | SE (df) | MDE | p (Holm) | expected | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row, check in zip(rows, spec.checks, strict=True):
            ci = "" if math.isnan(row["ci95"]) else f" ± {row['ci95']:.2f}"
            holm_p = "not in family" if row["p_holm"] is None else _num(row["p_holm"], ".3f")
            out.append(
                f"| {row['check']} | {row['comparison']} | {row['metric']} | {row['test']} "
                f"| {row['effect']:+.2f}{ci} | {_num(row['se'])} ({_num(row['df'], '.1f')}) | {_num(row['mde'])} "
                f"| {_num(row['p'], '.3f')} ({holm_p}) | {_expected(check)} | {row['verdict']} |"
            )
        notes = [f"- check {i}: {c.description}" for i, c in enumerate(spec.checks, start=1) if c.description]
        notes += [f"- check {i}, note: {c.note}" for i, c in enumerate(spec.checks, start=1) if c.note]
        out += ["", *notes] if notes else []
    out += ["", "## Summary", "", "| lesson | verdict |", "|---|---|", *summary]
    return "\n".join(out) + "\n"


def lessons(lessons_json: str, seeds: dict[str, Path], out_dir: Path) -> tuple[Path, Path]:
    """Write ``lessons.csv`` and ``lessons.md`` (and their provenance) into ``out_dir``."""
    spec = load_lessons(lessons_json)
    table = evaluate(spec, seeds)
    out_dir = Path(out_dir)
    csv = atomic.write_text(out_dir / "lessons.csv", table.write_csv())
    md = atomic.write_text(out_dir / "lessons.md", markdown(spec, table))
    provenance.record(
        out_dir,
        stage="lessons",
        config={
            "lessons": {k: v.model_dump() for k, v in spec.items()},
            "seeds": {k: str(v) for k, v in seeds.items()},
        },
        seed=None,
        inputs=dict(seeds),
        prefix="lessons.",
    )
    return csv, md
