"""`mm1 lessons`: each lesson check's effect over seeds by its design (paired, Welch, factorial), its
95% CI, MDE, raw and Holm p, and the verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from mm1.cli import main
from mm1.config import ConfigError
from mm1.figures.stats import mde, t_quantile
from mm1.study import Study

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
    return ma - mb, t_quantile(0.975, df) * math.sqrt(va + vb)


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """mean_s(a_s - b_s) and the half-width of its 95% CI for 3 seeds (t_0.975,2 = 4.3027)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    m = sum(d) / 3
    return m, 4.302653 * math.sqrt(sum((x - m) ** 2 for x in d) / 2 / 3)


@pytest.mark.parametrize(
    ("a", "b", "expect", "margin", "verdict"),
    [
        (20.0, 10.0, "a>b", None, "agrees"),  # a clear positive effect
        (10.0, 20.0, "a>b", None, "disagrees"),  # the opposite
        (10.0, 20.0, "a<b", None, "agrees"),
        (10.5, 10.0, "a>b", None, "inconclusive"),  # noise (CI ~ +-2.1) swamps a 0.5 effect
        (10.3, 10.0, "a~b", 5.0, "agrees"),  # CI within +-5
        (20.0, 10.0, "a~b", 2.0, "disagrees"),  # CI wholly beyond +2 (though wider than the margin)
        (11.0, 10.0, "a~b", 1.0, "insufficient precision"),  # half-width ~2.1 > margin 1: can never fit
        (12.0, 10.0, "a~b", 2.5, "inconclusive"),  # half-width < 2.5, but the CI straddles +2.5
        (9.0, 10.0, "a>=b", 4.0, "agrees"),  # CI above -4
        (0.0, 10.0, "a>=b", 2.0, "disagrees"),  # CI wholly below -2
        (9.0, 10.0, "a>=b", 1.0, "insufficient precision"),
        (7.0, 10.0, "a>=b", 2.5, "inconclusive"),  # half-width < 2.5, but the CI straddles -2.5
    ],
)
def test_check_verdicts(tmp_path: Path, a: float, b: float, expect: str, margin: float | None, verdict: str):
    extra = {} if margin is None else {"margin": margin}
    lessons = {"1": {"statement": "s", "checks": [check(["x"], ["y"], expect, **extra)]}}
    rc, table = run(tmp_path, lessons, {"x": level(a), "y": level(b, (0.5, -0.5, 0.0))})
    assert rc == 0
    overall = verdict if verdict in ("agrees", "disagrees") else "inconclusive"
    assert table["verdict"].to_list() == [verdict] and table["lesson_verdict"].to_list() == [overall]
    row = table.row(0, named=True)
    half = welch(level(a), level(b, (0.5, -0.5, 0.0)))[1]
    if verdict == "insufficient precision":
        assert half > margin
    assert row["test"] == "welch" and row["ci95"] == pytest.approx(half)


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
    se = half / t_quantile(0.975, row["df"])
    assert row["se"] == pytest.approx(se) and row["mde"] == pytest.approx(mde(se, row["df"]))


def test_paired_check_uses_the_per_seed_differences(tmp_path: Path):
    # a seed-level shift common to both cells (3, 0, -3): Welch sees it as noise, pairing removes it
    cells = {"x": [15.0, 12.5, 9.0], "y": [13.0, 11.0, 6.5]}
    lessons = {"1": {"statement": "s", "checks": [check(["x"], ["y"], test="paired")]}}
    rc, table = run(tmp_path, lessons, cells)
    assert rc == 0
    mean, half = paired(cells["x"], cells["y"])
    row = table.row(0, named=True)
    assert row["test"] == "paired" and row["df"] == 2
    assert row["effect"] == pytest.approx(mean) and row["ci95"] == pytest.approx(half, rel=1e-6)
    assert row["verdict"] == "agrees" and welch(cells["x"], cells["y"])[1] > 5 * half


@pytest.mark.parametrize("test", ["welch", "paired"])
def test_difference_of_differences_uses_the_per_seed_differences(tmp_path: Path, test: str):
    cells = {
        "res": [20.0, 23.0, 21.0],
        "wide": [14.0, 15.5, 13.0],
        "abl": [10.0, 11.0, 10.5],
        "base2": [9.0, 9.5, 11.0],
    }
    checked = {**check(["res"], ["abl"], test=test), "c": ["wide"], "d": ["base2"]}
    rc, table = run(tmp_path, {"1": {"statement": "s", "checks": [checked]}}, cells)
    assert rc == 0
    x = [r - a for r, a in zip(cells["res"], cells["abl"], strict=True)]
    y = [w - b for w, b in zip(cells["wide"], cells["base2"], strict=True)]
    mean, half = welch(x, y) if test == "welch" else paired(x, y)
    row = table.row(0, named=True)
    assert row["effect"] == pytest.approx(mean) and row["ci95"] == pytest.approx(half, rel=1e-6)
    assert row["comparison"] == "(res - abl) vs (wide - base2)" and row["verdict"] == "agrees"


FACTORS = {  # 2 kinds x 2 token counts, as a lesson's factors for figure "fig"
    "k1-t4": {"kind": "k1", "tokens": 4},
    "k1-t16": {"kind": "k1", "tokens": 16},
    "k2-t4": {"kind": "k2", "tokens": 4},
    "k2-t16": {"kind": "k2", "tokens": 16},
}


def test_factorial_check_fits_main_effects_with_seed_blocks(tmp_path: Path):
    cells = {
        "k1-t4": [10.0, 12.5, 9.0],
        "k1-t16": [14.0, 17.0, 12.5],
        "k2-t4": [10.5, 13.5, 8.0],
        "k2-t16": [15.5, 16.5, 13.5],
    }
    checks = [
        check(["k1-t16", "k2-t16"], ["k1-t4", "k2-t4"], test="factorial"),
        check(["k2-t4", "k2-t16"], ["k1-t4", "k1-t16"], "a~b", test="factorial", margin=2.0),
    ]
    rc, table = run(tmp_path, {"2": {"statement": "s", "checks": checks, "factors": {"fig": FACTORS}}}, cells)
    assert rc == 0
    # the independent fit: columns intercept, tokens=16, kind=k2, seed 1, seed 2
    names, seeds = list(cells), range(3)
    x = np.array([[1, "t16" in c, c.startswith("k2"), s == 1, s == 2] for c in names for s in seeds], dtype=float)
    y = np.array([cells[c][s] for c in names for s in seeds])
    beta, rss, _, _ = np.linalg.lstsq(x, y, rcond=None)
    cov = rss[0] / (12 - 5) * np.linalg.inv(x.T @ x)
    tokens, kind = table.row(0, named=True), table.row(1, named=True)
    assert tokens["effect"] == pytest.approx(beta[1]) and tokens["se"] == pytest.approx(math.sqrt(cov[1, 1]))
    assert kind["effect"] == pytest.approx(beta[2]) and kind["se"] == pytest.approx(math.sqrt(cov[2, 2]))
    assert tokens["df"] == kind["df"] == 7 and tokens["n_seeds"] == 3
    assert tokens["ci95"] == pytest.approx(t_quantile(0.975, 7) * tokens["se"])
    assert tokens["comparison"].startswith("tokens 16 vs 4 (main effect") and kind["comparison"].startswith("kind k2")
    assert tokens["verdict"] == "agrees" and kind["margin"] == 2.0


def test_holm_adjusts_the_directional_checks_of_the_whole_report(tmp_path: Path):
    # paired differences: big (p tiny), 2, 3, 4 (t = 5.196, 2 df: p = 1 - t / sqrt(t^2 + 2) = 0.0351),
    # and none; the a~b check stays out of the family
    cells = {"base": [10.0, 10.0, 10.0], "big": [30.0, 30.1, 29.9], "mid": [12.0, 13.0, 14.0], "nil": level(10.0)}
    lessons = {
        "1": {"statement": "s", "checks": [check(["big"], ["base"], test="paired")]},
        "2": {
            "statement": "t",
            "checks": [
                check(["mid"], ["base"], test="paired"),
                check(["nil"], ["base"], test="paired"),
                check(["mid"], ["base"], "a~b", margin=50.0, test="paired"),
            ],
        },
    }
    rc, table = run(tmp_path, lessons, cells)
    assert rc == 0
    t = 3.0 / (1.0 / math.sqrt(3))
    p_mid = 1 - t / math.sqrt(t * t + 2)
    big, mid, nil, same = table.to_dicts()
    assert mid["p"] == pytest.approx(p_mid) and mid["p"] < 0.05
    assert mid["p_holm"] == pytest.approx(2 * p_mid) and mid["p_holm"] > 0.05  # second smallest of 3: x 2
    assert big["p_holm"] == pytest.approx(3 * big["p"]) and nil["p_holm"] == pytest.approx(1.0)
    assert same["p_holm"] is None and same["verdict"] == "agrees"
    assert [big["verdict"], mid["verdict"], nil["verdict"]] == ["agrees", "inconclusive", "inconclusive"]


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


def test_markdown_states_each_lesson_its_checks_and_verdict(tmp_path: Path, capsys):
    table1 = "CI conditional on one trained encoder per arm; encoder-training variance not included"
    lessons = {
        "1": {
            "statement": "Resolution matters most.",
            "checks": [check(["x"], ["y"], description="64 vs 32 px", note=table1, test="paired")],
        },
        "2": {"statement": "Connector type barely matters.", "checks": [check(["x"], ["y"], "a~b", margin=1.0)]},
    }
    rc, table = run(tmp_path, lessons, {"x": level(20.0), "y": level(10.0, (0.5, -0.5, 0.0))})
    assert rc == 0 and table["lesson"].to_list() == [1, 2] and table["check"].to_list() == [1, 1]
    for column in ("test", "se", "df", "ci95", "mde", "p", "p_holm", "margin", "note", "verdict"):
        assert column in table.columns, column
    md = (tmp_path / "out/lessons.md").read_text()
    assert "## Lesson 1: Resolution matters most. — agrees" in md
    assert "## Lesson 2: Connector type barely matters. — disagrees" in md
    assert "| test | effect ± 95% CI | SE (df) | MDE | p (Holm) | expected | verdict |" in md
    first, second = table.to_dicts()
    assert f"| x vs y | 0-shot | paired | +10.00 ± {first['ci95']:.2f} | {first['se']:.2f} (2.0) " in md
    assert f"| {first['mde']:.2f} | {first['p']:.3f} ({first['p_holm']:.3f}) | > 0 | agrees |" in md
    assert f"| {second['p']:.3f} (not in family) | within ±1.00 | disagrees |" in md
    assert "over the 1 directional checks" in md and "insufficient precision" in md
    assert "- check 1: 64 vs 32 px" in md and f"- check 1, note: {table1}" in md
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
        ({"1": {"statement": "s", "checks": [check(["x"], ["y"], "a~b")]}}, "needs margin > 0"),
        ({"1": {"statement": "s", "checks": [check(["x"], ["y"], "a>=b")]}}, "needs margin > 0"),
        ({"1": {"statement": "s", "checks": [check(["x"], ["y"], margin=1.0)]}}, "takes no margin"),
        ({"1": {"statement": "s", "checks": [check(["x"], ["y"], test="anova")]}}, "1.checks.0.test"),
        ({"1": {"statement": "s", "checks": [check(["x"], ["y"], test="factorial")]}}, "needs factors.fig"),
        (
            {
                "1": {
                    "statement": "s",
                    "checks": [check(["k1-t16"], ["k1-t4"], test="factorial")],
                    "factors": {"fig": FACTORS},
                }
            },
            "every such cell of the design: ['k1-t16', 'k2-t16']",
        ),
        (
            {
                "1": {
                    "statement": "s",
                    "checks": [check(["k1-t16"], ["k2-t4"], test="factorial")],
                    "factors": {"fig": FACTORS},
                }
            },
            "differ in exactly one factor",
        ),
        (
            {
                "1": {
                    "statement": "s",
                    "checks": [check(["x"], ["y"])],
                    "factors": {"fig": {"x": {"a": 1}, "y": {"b": 1}}},
                }
            },
            "factors.fig: every cell needs a level of the same factors",
        ),
        (
            {"1": {"statement": "s", "checks": [{**check(["x"], ["y"], test="factorial"), "c": ["x"], "d": ["y"]}]}},
            "not c and d",
        ),
        ({"1": {"statement": "s", "checks": [{**check(["x"], ["y"]), "c": ["x"]}]}}, "both c and d"),
        ({"1": {"checks": [check(["x"], ["y"])]}}, "1.statement"),
    ],
)
def test_an_invalid_spec_names_the_field(tmp_path: Path, capsys, lessons: dict, field: str):
    rc, _ = run(tmp_path, lessons, {"x": level(1.0), "y": level(2.0)})
    err = capsys.readouterr().err
    assert rc == 1 and "invalid lessons" in err and field in err and "Traceback" not in err


REPO = Path(__file__).resolve().parents[1]
FACTOR_KEYS = {"kind": "model.connector.kind", "tokens": "model.connector.num_tokens", "px": "model.encoder.image_size"}


def test_the_committed_lessons_declare_their_design_and_spell_each_cells_true_levels():
    data = yaml.safe_load((REPO / "config/study.yaml").read_text())
    raw = data["study"]["lessons"]
    assert all("test" in c and "metric" in c for lesson in raw.values() for c in lesson["checks"])
    study = Study(data)
    factorial = 0
    for lesson in study.base.study.lessons.values():
        factorial += sum(c.test == "factorial" for c in lesson.checks)
        for fig, design in lesson.factors.items():
            assert sorted(design) == sorted(study.base.study.figures[fig].experiments), fig
            for cell, levels in design.items():
                cfg = study.config(cell).model_dump()
                for factor, level in levels.items():
                    value = cfg
                    for part in FACTOR_KEYS[factor].split("."):
                        value = value[part]
                    assert str(level) == str(value), (fig, cell, factor)
    assert factorial == 4  # fig4: tokens, resolution, and two connector kinds vs avg_pool


def test_factors_name_only_cells_of_their_figure():
    lesson = {"statement": "s", "checks": [{**check(["base"], ["base"]), "figure": "f"}]}
    study = {
        "figures": {"f": {"title": "t", "experiments": ["base"]}},
        "lessons": {"1": lesson | {"factors": {"f": {"ghost": {"k": 1}}}}},
    }
    with pytest.raises(ConfigError, match=r"factors.f: cells \['ghost'\] are not in figure 'f'"):
        Study({"study": study})
