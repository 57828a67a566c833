"""The paper's lessons (shared/MM1.md), confirmed or refuted: each check's effect, its 95% CI, a verdict.

Input: the ``<fig>.seeds.csv`` tables of ``mm1 compare`` (columns figure, cell, seed, run, metric,
value; one row per cell, seed and metric). A check (:class:`mm1.config.study.LessonCheck`) compares
cells of one figure on one metric:

* Per seed s, a side's value is the mean of the metric over that side's cells' runs of seed s:
  a_s = mean over the a cells (likewise b_s, c_s, d_s). Every cell of a check must have the same seeds.
* Without c/d the effect is mean_s(a_s) - mean_s(b_s) with Welch's 95% CI (:func:`stats.diff_ci`):
  +- t_{0.975, df} * sqrt(var(a)/n + var(b)/n), df by Welch-Satterthwaite. Runs of different cells
  are independent runs, so the two sides are not paired by seed.
* With c/d the effect is the difference of differences mean_s(a_s - b_s) - mean_s(c_s - d_s): the
  per-seed differences x_s = a_s - b_s and y_s = c_s - d_s enter ``diff_ci(x, y)`` as two independent
  samples. A cell on both sides (e.g. b = d = the baseline) makes x and y positively correlated, so
  the CI is then wider than it needs to be (conservative), never narrower.

Verdict of a check, with CI = [low, high] = effect -+ ci95:

* ``a>b``: "agrees" if low > 0, "disagrees" if high < 0, else "inconclusive"; ``a<b`` the mirror image.
* ``a~b`` with tolerance t: "agrees" if the whole CI lies within [-t, t]; "disagrees" if it lies wholly
  beyond t on one side (low > t or high < -t); else "inconclusive".
* Fewer than 2 seeds give no CI: "inconclusive (1 seed)".

Verdict of a lesson: "agrees" if every check agrees, "disagrees" if every check disagrees, "mixed" if
some agree and some disagree, otherwise "inconclusive" (some checks inconclusive, none contradicting
another). Reads result tables only (polars); never imports torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
from pydantic import TypeAdapter, ValidationError

from mm1 import atomic, provenance
from mm1.config.study import LessonCheck, LessonSpec
from mm1.figures.stats import Estimate, diff_ci

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


def verdict(est: Estimate, expect: str, tolerance: float = 0.0) -> str:
    """A check's verdict from its effect and CI (rules in the module docstring)."""
    if math.isnan(est.ci95):
        return "inconclusive (1 seed)"
    low, high = est.low, est.high
    if expect == "a<b":
        low, high = -high, -low
    if expect in ("a>b", "a<b"):
        return "agrees" if low > 0 else "disagrees" if high < 0 else "inconclusive"
    if -tolerance <= low and high <= tolerance:
        return "agrees"
    return "disagrees" if low > tolerance or high < -tolerance else "inconclusive"


def lesson_verdict(verdicts: list[str]) -> str:
    """All agree -> agrees; all disagree -> disagrees; some of each -> mixed; else inconclusive."""
    if all(v == "agrees" for v in verdicts):
        return "agrees"
    if all(v == "disagrees" for v in verdicts):
        return "disagrees"
    return "mixed" if "agrees" in verdicts and "disagrees" in verdicts else "inconclusive"


def comparison(check: LessonCheck) -> str:
    """The check in words: "A vs B", or "(A - B) vs (C - D)"; several cells read "mean(x, y)"."""

    def side(cells: list[str]) -> str:
        return cells[0] if len(cells) == 1 else f"mean({', '.join(cells)})"

    if check.c:
        return f"({side(check.a)} - {side(check.b)}) vs ({side(check.c)} - {side(check.d)})"
    return f"{side(check.a)} vs {side(check.b)}"


def _read(path: Path, where: str) -> pl.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{where}: {path} does not exist; run mm1 compare for that figure first")
    frame = pl.read_csv(path)
    missing = [c for c in SEEDS_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: {path} lacks the columns {missing}")
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


def effect(frame: pl.DataFrame, check: LessonCheck, where: str) -> Estimate:
    """The check's effect and Welch 95% CI over seeds (the statistic of the module docstring)."""
    metrics = set(frame["metric"].to_list())
    if check.metric not in metrics:
        raise ValueError(f"{where}: no metric {check.metric!r} (metrics: {', '.join(sorted(metrics))})")
    cells = {c: _cell_values(frame, c, check.metric, where) for c in (*check.a, *check.b, *check.c, *check.d)}
    first, seeds = next(iter(cells)), sorted(next(iter(cells.values())))
    for cell, values in cells.items():
        if sorted(values) != seeds:
            raise ValueError(f"{where}: cell {cell!r} has seeds {sorted(values)} but cell {first!r} has {seeds}")

    def side(names: list[str]) -> list[float]:  # per seed: the mean over the side's cells
        return [sum(cells[c][s] for c in names) / len(names) for s in seeds]

    a, b = side(check.a), side(check.b)
    if not check.c:
        return diff_ci(a, b)
    c, d = side(check.c), side(check.d)
    return diff_ci([x - y for x, y in zip(a, b, strict=True)], [x - y for x, y in zip(c, d, strict=True)])


def evaluate(lessons: dict[str, LessonSpec], seeds: dict[str, Path]) -> pl.DataFrame:
    """One row per check: its effect, CI and verdict, and its lesson's verdict."""
    frames: dict[str, pl.DataFrame] = {}
    rows = []
    for lesson, spec in lessons.items():
        checks = []
        for i, check in enumerate(spec.checks, start=1):
            where = f"lesson {lesson!r}, check {i}, figure {check.figure!r}"
            if check.figure not in seeds:
                given = ", ".join(seeds) or "none"
                raise ValueError(f"{where}: no --seeds {check.figure}=PATH given (given: {given})")
            where += f" ({seeds[check.figure]})"
            if check.figure not in frames:
                frames[check.figure] = _read(seeds[check.figure], where)
            est = effect(frames[check.figure], check, where)
            checks.append(
                {
                    "lesson": lesson,
                    "statement": spec.statement,
                    "check": i,
                    "figure": check.figure,
                    "metric": check.metric,
                    "comparison": comparison(check),
                    "expect": check.expect,
                    "n_seeds": est.n,
                    "effect": est.mean,
                    "ci95": est.ci95,
                    "low": est.low,
                    "high": est.high,
                    "verdict": verdict(est, check.expect, check.tolerance),
                }
            )
        overall = lesson_verdict([c["verdict"] for c in checks])
        rows += [c | {"lesson_verdict": overall} for c in checks]
    return pl.DataFrame(rows)


def _expected(check: LessonCheck) -> str:
    """The paper's claim about the effect, for the report."""
    return {"a>b": "> 0", "a<b": "< 0"}.get(check.expect, f"within ±{check.tolerance:.2f}")


def markdown(lessons: dict[str, LessonSpec], table: pl.DataFrame) -> str:
    """The report: per lesson its verdict, a table of its checks and their descriptions; then a summary."""
    out = [
        "# MM1's lessons in miniature",
        "",
        "Each effect is the difference of the per-seed means (a - b, or (a - b) - (c - d)) with its Welch 95% CI.",
        "A check agrees when its CI lies wholly on the side the paper claims (or, for a~b, within the tolerance).",
    ]
    summary = []
    for lesson, spec in lessons.items():
        rows = table.filter(pl.col("lesson") == lesson).to_dicts()
        overall = rows[0]["lesson_verdict"]
        summary.append(f"| {lesson} | {overall} |")
        out += ["", f"## Lesson {lesson}: {spec.statement} — {overall}", ""]
        out += ["| check | comparison | metric | effect ± 95% CI | expected | verdict |", "|---|---|---|---|---|---|"]
        for row, check in zip(rows, spec.checks, strict=True):
            ci = "" if math.isnan(row["ci95"]) else f" ± {row['ci95']:.2f}"
            out.append(
                f"| {row['check']} | {row['comparison']} | {row['metric']} | {row['effect']:+.2f}{ci} "
                f"| {_expected(check)} | {row['verdict']} |"
            )
        notes = [f"- check {i}: {c.description}" for i, c in enumerate(spec.checks, start=1) if c.description]
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
