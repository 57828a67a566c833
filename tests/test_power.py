"""The pilot's power analysis (mm1.figures.power) on cases worked by hand."""

from __future__ import annotations

import math

import polars as pl
import pytest

from mm1.cli import main
from mm1.figures import power


def test_pooled_sd_by_hand():
    # (1, 3): ss 2 on 1 df; (2, 4, 6): ss 8 on 2 df; a lone value adds nothing
    sd, df = power.pooled_sd([[1.0, 3.0], [2.0, 4.0, 6.0], [9.0]])
    assert df == 3 and sd == pytest.approx(math.sqrt(10 / 3))
    with pytest.raises(ValueError, match="at least 2"):
        power.pooled_sd([[1.0], [2.0]])


def test_mde_by_hand():
    # paired, n = 5: (t_0.975,4 = 2.7764 + t_0.80,4 = 0.9410) * 1 / sqrt(5)
    assert power.mde_paired(1.0, 5) == pytest.approx((2.7764 + 0.9410) / math.sqrt(5), rel=1e-3)
    # Welch, n = 3 per arm, df 4: (2.7764 + 0.9410) * sqrt(2 / 3)
    assert power.mde_welch(1.0, 3) == pytest.approx((2.7764 + 0.9410) * math.sqrt(2 / 3), rel=1e-3)


@pytest.mark.parametrize("paired", [False, True])
@pytest.mark.parametrize("delta", [0.5, 1.0, 2.5])
def test_seeds_needed_is_the_smallest_n_that_reaches_the_effect(paired, delta):
    fn = power.mde_paired if paired else power.mde_welch
    n = power.seeds_needed(delta, 1.0, paired)
    assert fn(1.0, n) <= delta
    assert n == 2 or fn(1.0, n - 1) > delta


def test_seeds_needed_approaches_the_normal_formula_for_large_n():
    # Welch, sd 1, delta 0.2: n ~ 2 ((1.95996 + 0.84162) / 0.2)^2 = 392.5; t quantiles add a little
    n = power.seeds_needed(0.2, 1.0, paired=False)
    assert 392 <= n <= 396
    assert power.seeds_needed(1e-4, 1.0, paired=True) is None  # beyond MAX_SEEDS
    with pytest.raises(ValueError, match="> 0"):
        power.seeds_needed(0.0, 1.0, paired=True)


def test_sd_interval_is_close_to_the_exact_chi_square_limits():
    # df 5: chi2_0.975 = 12.8325, chi2_0.025 = 0.8312 -> sd * sqrt(5 / q)
    low, high = power.sd_interval(1.0, 5)
    assert low == pytest.approx(math.sqrt(5 / 12.8325), rel=0.03)
    assert high == pytest.approx(math.sqrt(5 / 0.8312), rel=0.03)


def _frame(a: list[float], b: list[float], metric: str = "8-shot ll") -> pl.DataFrame:
    rows = [{"figure": "pilot", "cell": cell, "seed": s, "run": f"{cell}-{s}", "metric": metric, "value": v}
            for cell, vals in (("abl", a), ("res-48", b)) for s, v in enumerate(vals)]  # fmt: skip
    return pl.DataFrame(rows)


def test_analyse_by_hand():
    a, b = [10.0, 12.0, 14.0, 16.0], [11.0, 12.5, 15.5, 17.0]  # b - a = 1, 0.5, 1.5, 1
    row = power.analyse(_frame(a, b), ["8-shot ll"], [1.0], seeds=3).row(0, named=True)
    sd_run = math.sqrt((20.0 + 22.5) / 6)  # ss(a) = 20, ss(b) = 22.5 on 3 + 3 df
    sd_diff = math.sqrt(0.5 / 3)  # diffs a - b: -1, -0.5, -1.5, -1 -> ss 0.5 on 3 df
    assert row["sd_run"] == pytest.approx(sd_run) and row["df"] == 6
    assert row["sd_diff"] == pytest.approx(sd_diff)
    assert row["rho"] == pytest.approx(1 - sd_diff**2 / (2 * sd_run**2))
    assert row["mde_welch"] == pytest.approx(power.mde_welch(sd_run, 3))
    assert row["n_welch_1"] == power.seeds_needed(1.0, sd_run, paired=False)
    assert row["n_paired_1"] == power.seeds_needed(1.0, sd_diff, paired=True)
    assert row["n_paired_1"] < row["n_welch_1"]  # strongly correlated seeds: pairing needs fewer


def test_analyse_names_a_missing_metric():
    with pytest.raises(ValueError, match="no metric '0-shot ll'"):
        power.analyse(_frame([1, 2], [2, 3]), ["0-shot ll"], [1.0], seeds=3)


def test_power_cli_writes_the_report(tmp_path):
    seeds = tmp_path / "pilot.seeds.csv"
    _frame([10.0, 12.0, 14.0], [11.0, 12.5, 15.5]).write_csv(seeds)
    out = tmp_path / "out"
    args = ["power", "--seeds", str(seeds), "--metric", "8-shot ll", "--effects", "1,4", "--study-seeds", "3"]
    assert main([*args, "--out", str(out)]) == 0
    md = (out / "power.md").read_text()
    assert "| 8-shot ll | 6 |" in md and "n for 4 (Welch / paired)" in md
    table = pl.read_csv(out / "power.csv")
    assert {"sd_run", "sd_diff", "n_welch_1", "n_paired_4"} <= set(table.columns)
    assert (out / "power.provenance.json").is_file()
