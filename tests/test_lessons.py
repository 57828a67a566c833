"""`mm1 lessons`: each lesson check's effect over seeds, its Welch 95% CI and the verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest

from mm1.cli import main
from mm1.figures.stats import t975

NOISE = (-1.0, 0.0, 1.0)  # per-seed offsets: sd 1 around each cell's level


def seeds_csv(path: Path, figure: str, cells: dict[str, list[float]], metric: str = "0-shot") -> Path:
    """A <fig>.seeds.csv as mm1 compare writes it: cell -> its value for seed 0, 1, ..."""
    rows = [
        {
            "figure": figure,
            "cell": cell,
            "seed": s,
            "run": cell if s == 0 else f"{cell}-s{s}",
            "metric": metric,
            "value": v,
        }
        for cell, values in cells.items()
        for s, v in enumerate(values)
    ]
    pl.DataFrame(rows).write_csv(path)
    return path


def level(x: float, noise: tuple[float, ...] = NOISE) -> list[float]:
    return [x + e for e in noise]


def check(a: list[str], b: list[str], expect: str = "a>b", **extra) -> dict:
    return {"figure": "fig", "metric": "0-shot", "a": a, "b": b, "expect": expect, **extra}


def run(tmp_path: Path, lessons: dict, cells: dict[str, list[float]]) -> tuple[int, pl.DataFrame | None]:
    csv = seeds_csv(tmp_path / "fig.seeds.csv", "fig", cells)
    out = tmp_path / "out"
    rc = main(["lessons", "--lessons", json.dumps(lessons), "--seeds", f"fig={csv}", "--out", str(out)])
    return rc, pl.read_csv(out / "lessons.csv") if rc == 0 else None


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """mean(a) - mean(b) and the half-width of Welch's 95% CI, written out."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return ma - mb, t975(df) * math.sqrt(va + vb)


@pytest.mark.parametrize(
    ("a", "b", "expect", "tolerance", "verdict"),
    [
        (20.0, 10.0, "a>b", 0.0, "agrees"),  # a clear positive effect
        (10.0, 20.0, "a>b", 0.0, "disagrees"),  # the opposite
        (10.0, 20.0, "a<b", 0.0, "agrees"),
        (10.5, 10.0, "a>b", 0.0, "inconclusive"),  # noise (CI ~ +-1.9) swamps a 0.5 effect
        (10.3, 10.0, "a~b", 5.0, "agrees"),  # CI within +-5
        (20.0, 10.0, "a~b", 2.0, "disagrees"),  # CI wholly beyond +2
        (12.0, 10.0, "a~b", 2.0, "inconclusive"),  # CI straddles +2
    ],
)
def test_check_verdicts(tmp_path: Path, a: float, b: float, expect: str, tolerance: float, verdict: str):
    lessons = {"1": {"statement": "s", "checks": [check(["x"], ["y"], expect, tolerance=tolerance)]}}
    rc, table = run(tmp_path, lessons, {"x": level(a), "y": level(b, (0.5, -0.5, 0.0))})
    assert rc == 0
    assert table["verdict"].to_list() == [verdict] and table["lesson_verdict"].to_list() == [verdict]


def test_effect_and_ci_are_welchs_over_the_per_seed_side_means(tmp_path: Path):
    cells = {"x1": [11.0, 14.0, 12.0], "x2": [9.0, 10.0, 13.0], "y": [8.0, 8.5, 10.5]}
    lessons = {"1": {"statement": "s", "checks": [check(["x1", "x2"], ["y"])]}}
    rc, table = run(tmp_path, lessons, cells)
    assert rc == 0
    a = [(p + q) / 2 for p, q in zip(cells["x1"], cells["x2"], strict=True)]
    mean, half = welch(a, cells["y"])
    row = table.row(0, named=True)
    assert row["effect"] == pytest.approx(mean) and row["ci95"] == pytest.approx(half)
    assert row["low"] == pytest.approx(mean - half) and row["high"] == pytest.approx(mean + half)
    assert row["n_seeds"] == 3 and row["comparison"] == "mean(x1, x2) vs y"


def test_difference_of_differences_uses_the_per_seed_differences(tmp_path: Path):
    cells = {
        "res": [20.0, 23.0, 21.0],
        "wide": [14.0, 15.5, 13.0],
        "abl": [10.0, 11.0, 10.5],
        "base2": [9.0, 9.5, 11.0],
    }
    lessons = {"1": {"statement": "s", "checks": [{**check(["res"], ["abl"]), "c": ["wide"], "d": ["base2"]}]}}
    rc, table = run(tmp_path, lessons, cells)
    assert rc == 0
    x = [r - a for r, a in zip(cells["res"], cells["abl"], strict=True)]
    y = [w - b for w, b in zip(cells["wide"], cells["base2"], strict=True)]
    mean, half = welch(x, y)
    row = table.row(0, named=True)
    assert row["effect"] == pytest.approx(mean) and row["ci95"] == pytest.approx(half)
    assert row["comparison"] == "(res - abl) vs (wide - base2)" and row["verdict"] == "agrees"


@pytest.mark.parametrize(
    ("levels", "verdict"),
    [
        ((20.0, 20.0), "agrees"),
        ((0.0, 0.0), "disagrees"),
        ((20.0, 0.0), "mixed"),
        ((20.0, 10.5), "inconclusive"),
    ],
)
def test_lesson_verdict_combines_its_checks(tmp_path: Path, levels: tuple[float, float], verdict: str):
    lessons = {"1": {"statement": "s", "checks": [check(["p"], ["base"]), check(["q"], ["base"])]}}
    cells = {"p": level(levels[0]), "q": level(levels[1]), "base": level(10.0)}
    rc, table = run(tmp_path, lessons, cells)
    assert rc == 0 and table["lesson_verdict"].to_list() == [verdict, verdict]


def test_one_seed_is_inconclusive(tmp_path: Path):
    lessons = {"1": {"statement": "s", "checks": [check(["x"], ["y"])]}}
    rc, table = run(tmp_path, lessons, {"x": [30.0], "y": [10.0]})
    assert rc == 0
    row = table.row(0, named=True)
    assert row["verdict"] == "inconclusive (1 seed)" and row["effect"] == 20.0 and math.isnan(row["ci95"])
    assert row["lesson_verdict"] == "inconclusive"


def test_markdown_states_each_lesson_and_its_verdict(tmp_path: Path, capsys):
    lessons = {
        "1": {"statement": "Resolution matters most.", "checks": [check(["x"], ["y"], description="64 vs 32 px")]},
        "2": {"statement": "Connector type barely matters.", "checks": [check(["x"], ["y"], "a~b", tolerance=1.0)]},
    }
    rc, table = run(tmp_path, lessons, {"x": level(20.0), "y": level(10.0)})
    assert rc == 0 and table["lesson"].to_list() == [1, 2] and table["check"].to_list() == [1, 1]
    md = (tmp_path / "out/lessons.md").read_text()
    assert "## Lesson 1: Resolution matters most. — agrees" in md
    assert "## Lesson 2: Connector type barely matters. — disagrees" in md
    assert "| x vs y | 0-shot | +10.00 ± " in md and "64 vs 32 px" in md and "within ±1.00" in md
    assert "| 1 | agrees |" in md and "| 2 | disagrees |" in md
    prov = json.loads((tmp_path / "out/lessons.provenance.json").read_text())
    assert prov["stage"] == "lessons" and set(prov["inputs"]) == {"fig"}
    assert "lessons.md" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("lesson_check", "message"),
    [
        (check(["x"], ["nope"]), "lesson '1', check 1, figure 'fig' ({csv}): no cell 'nope'"),
        ({**check(["x"], ["y"]), "metric": "9-shot"}, "lesson '1', check 1, figure 'fig' ({csv}): no metric '9-shot'"),
        ({**check(["x"], ["y"]), "figure": "fig9"}, "lesson '1', check 1, figure 'fig9': no --seeds fig9=PATH"),
    ],
)
def test_missing_names_are_one_line_errors(tmp_path: Path, capsys, lesson_check: dict, message: str):
    rc, _ = run(tmp_path, {"1": {"statement": "s", "checks": [lesson_check]}}, {"x": level(1.0), "y": level(2.0)})
    err = capsys.readouterr().err
    assert rc == 1 and message.format(csv=tmp_path / "fig.seeds.csv") in err and "Traceback" not in err


def test_a_missing_seeds_file_is_named(tmp_path: Path, capsys):
    spec = json.dumps({"3": {"statement": "s", "checks": [check(["x"], ["y"])]}})
    missing = tmp_path / "fig.seeds.csv"
    assert main(["lessons", "--lessons", spec, "--seeds", f"fig={missing}", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"lesson '3', check 1, figure 'fig' ({missing}): {missing} does not exist" in err


@pytest.mark.parametrize(
    ("lessons", "field"),
    [
        ({"1": {"statement": "s", "checks": [check(["x"], ["y"], "a>>b")]}}, "1.checks.0.expect"),
        ({"1": {"statement": "s", "checks": [check(["x"], [])]}}, "1.checks.0.b"),
        ({"1": {"statement": "s", "checks": [check(["x"], ["y"], "a~b")]}}, "needs a tolerance > 0"),
        ({"1": {"statement": "s", "checks": [{**check(["x"], ["y"]), "c": ["x"]}]}}, "both c and d"),
        ({"1": {"checks": [check(["x"], ["y"])]}}, "1.statement"),
    ],
)
def test_an_invalid_spec_names_the_field(tmp_path: Path, capsys, lessons: dict, field: str):
    rc, _ = run(tmp_path, lessons, {"x": level(1.0), "y": level(2.0)})
    err = capsys.readouterr().err
    assert rc == 1 and "invalid lessons" in err and field in err and "Traceback" not in err
