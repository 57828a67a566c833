"""The six lessons at 600 steps as one report would judge them: this run's checks (lessons 1, 3-6,
lessons.csv here) and lesson 2's (../46ed61d-fig4-600/lessons.csv) in one Holm family, each check's
verdict by mm1.figures.lessons.verdict, each lesson's by lesson_verdict (as declared in
docs/study-results.md before the run). Writes lessons-all.csv next to this file and prints the table.

    python docs/results/lessons-600/combine.py
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from mm1.figures.lessons import lesson_verdict, verdict
from mm1.figures.stats import Effect, holm

HERE = Path(__file__).resolve().parent


def main() -> None:
    rows = pl.concat(
        [pl.read_csv(HERE.parent / "46ed61d-fig4-600/lessons.csv"), pl.read_csv(HERE / "lessons.csv")],
        how="diagonal_relaxed",
    ).sort("lesson", "check", maintain_order=True)
    rows = rows.to_dicts()
    family = [i for i, r in enumerate(rows) if r["p_holm"] is not None]
    for i, p in zip(family, holm([rows[i]["p"] for i in family]), strict=True):
        rows[i]["p_holm_all"] = p
    for r in rows:
        est = Effect(r["effect"], math.nan if r["se"] is None else r["se"], r["df"] or math.nan, r["n_seeds"], r["test"])
        p_all = r.get("p_holm_all")
        r["verdict_all"] = verdict(est, r["expect"], r["margin"] or 0.0, math.nan if p_all is None else p_all)
    for lesson in {r["lesson"] for r in rows}:
        overall = lesson_verdict([r["verdict_all"] for r in rows if r["lesson"] == lesson])
        for r in rows:
            if r["lesson"] == lesson:
                r["lesson_verdict_all"] = overall
    table = pl.DataFrame(rows, infer_schema_length=None)
    table.write_csv(HERE / "lessons-all.csv")
    with pl.Config(tbl_rows=-1, tbl_width_chars=200, fmt_str_lengths=60):
        print(
            table.select(
                "lesson", "check", "comparison", "metric", "effect", "ci95", "mde", "p", "p_holm", "p_holm_all",
                "verdict", "verdict_all", "lesson_verdict_all",
            )
        )
    agree = table.unique("lesson").filter(pl.col("lesson_verdict_all") == "agrees").height
    print(f"{agree} of {table['lesson'].n_unique()} lessons agree")


if __name__ == "__main__":
    main()
