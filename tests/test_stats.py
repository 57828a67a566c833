"""mm1.figures.stats: the Student-t distribution, Welch / paired / factorial effects, MDE and Holm,
each against an independent computation (closed forms, hand-worked numbers, numpy least squares)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mm1.figures.stats import (
    T975,
    betainc,
    factorial,
    holm,
    mde,
    paired,
    t_cdf,
    t_quantile,
    two_sided_p,
    welch,
)

# --- the t distribution ----------------------------------------------------------------------------


@pytest.mark.parametrize(("t", "df", "p"), [(2.0, 5, 0.1019), (3.182, 3, 0.0500), (2.228, 10, 0.0500), (1.0, 1, 0.5)])
def test_two_sided_p_matches_printed_tables(t: float, df: float, p: float):
    assert two_sided_p(t, df) == pytest.approx(p, abs=6e-5)


@pytest.mark.parametrize("t", [-30.0, -2.5, -0.3, 0.0, 0.7, 4.0, 100.0])
def test_t_cdf_matches_the_closed_forms_of_1_and_2_df(t: float):
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)  # Cauchy
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)


def test_t_cdf_tends_to_the_normal():
    for z in (-1.96, 0.5, 2.5):
        assert t_cdf(z, 1e8) == pytest.approx(0.5 * (1 + math.erf(z / math.sqrt(2))), abs=1e-7)


@pytest.mark.parametrize(("a", "b", "x"), [(1.0, 1.0, 0.3), (2.5, 1.0, 0.7), (1.0, 3.5, 0.2), (0.5, 0.5, 0.9)])
def test_betainc_closed_forms(a: float, b: float, x: float):
    if b == 1.0:
        want = x**a  # I_x(a, 1) = x^a
    elif a == 1.0:
        want = 1 - (1 - x) ** b  # I_x(1, b) = 1 - (1 - x)^b
    else:
        want = 2 / math.pi * math.asin(math.sqrt(x))  # I_x(1/2, 1/2): the arcsine law
    assert betainc(a, b, x) == pytest.approx(want, abs=1e-13)
    assert betainc(a, b, x) + betainc(b, a, 1 - x) == pytest.approx(1.0, abs=1e-13)


def test_t_quantile_reproduces_the_printed_975_table_and_inverts_the_cdf():
    assert [round(t_quantile(0.975, df), 3) for df in range(1, 31)] == list(T975)
    # t_{0.80}: 1.376 (1 df), 1.061 (2), 0.920 (5), 0.879 (10), 0.8416 (normal) in printed tables
    assert [round(t_quantile(0.80, df), 3) for df in (1, 2, 5, 10)] == [1.376, 1.061, 0.920, 0.879]
    assert t_quantile(0.80, 1e8) == pytest.approx(0.8416, abs=1e-4)
    for p, df in itertools.product((0.01, 0.5, 0.8, 0.975, 0.999), (1.0, 2.7, 7.3, 40.0)):
        assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)


def test_mde_is_the_sum_of_the_two_quantiles_times_se():
    assert mde(2.0, 4) == pytest.approx((2.776 + 0.941) * 2.0, abs=2e-3)  # t_.975,4 = 2.776; t_.80,4 = 0.941
    assert mde(1.0, 1e8) == pytest.approx(1.95996 + 0.84162, abs=1e-4)  # the normal's 2.80 sd


# --- Holm --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "adjusted"),
    [
        # sorted 0.005, 0.01, 0.03, 0.04 -> x4 = 0.02, x3 = 0.03, x2 = 0.06, x1 = 0.04 -> running max 0.06
        ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),
        ([0.02, 0.021, 0.5], [0.06, 0.06, 0.5]),  # 0.021 x 2 = 0.042 is raised to the earlier 0.06
        ([0.6, 0.7], [1.0, 1.0]),  # capped at 1
        ([0.04], [0.04]),  # a family of one: unchanged
    ],
)
def test_holm_against_hand_worked_examples(raw: list[float], adjusted: list[float]):
    assert holm(raw) == pytest.approx(adjusted)


# --- Welch and paired ----------------------------------------------------------------------------------


def test_welch_against_a_hand_computation():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 9.0]
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3  # 5/12 and 13/3
    est = welch(a, b)
    assert est.effect == pytest.approx(-2.5) and est.se == pytest.approx(math.sqrt(4.75))
    assert est.df == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 2))
    assert est.ci95 == pytest.approx(t_quantile(0.975, est.df) * math.sqrt(4.75))
    assert est.test == "welch" and est.n == 3 and est.mde == pytest.approx(mde(est.se, est.df))


def test_paired_uses_the_per_seed_differences():
    a, b = [10.0, 14.0, 12.5], [8.0, 11.0, 10.5]  # differences 2, 3, 2
    est = paired(a, b)
    d = np.array(a) - np.array(b)
    assert est.effect == pytest.approx(7 / 3) and est.df == 2 and est.n == 3
    assert est.se == pytest.approx(d.std(ddof=1) / math.sqrt(3))
    t = est.effect / est.se
    assert est.p == pytest.approx(1 - t / math.sqrt(t * t + 2), abs=1e-12)  # closed form of 2 df
    assert est.ci95 == pytest.approx(4.302653 * est.se, rel=1e-6)
    # the same values as independent arms: the shared seed effect stays in Welch's se
    assert welch(a, b).se > 2 * est.se


def test_one_seed_has_no_ci():
    for est in (welch([3.0], [1.0]), paired([3.0], [1.0])):
        assert est.effect == 2.0 and math.isnan(est.se) and math.isnan(est.ci95) and math.isnan(est.p)


# --- the factorial main-effects model ------------------------------------------------------------------

KINDS, TOKENS, PX, SEEDS = ("avg", "attn", "cabs"), ("4", "16"), ("32", "48"), (0, 1, 2)


def fig4_like(rng: np.random.Generator, drop: int = 0) -> tuple[list[float], list[dict[str, str]], list[int]]:
    """3 kinds x 2 token counts x 2 resolutions x 3 seeds with additive effects, seed shifts and noise."""
    kind_fx, seed_fx = {"avg": 0.0, "attn": 1.0, "cabs": -0.5}, {0: 0.0, 1: 3.0, 2: -2.0}
    y, levels, blocks = [], [], []
    for kind, tok, px, s in itertools.product(KINDS, TOKENS, PX, SEEDS):
        value = 20 + kind_fx[kind] + 4.0 * (tok == "16") + 2.0 * (px == "48") + seed_fx[s] + rng.normal(0, 1.5)
        y.append(value)
        levels.append({"kind": kind, "tokens": tok, "px": px})
        blocks.append(s)
    return y[drop:], levels[drop:], blocks[drop:]


def lstsq_contrast(y, levels, blocks, factor, level_a, level_b) -> tuple[float, float, int]:
    """The same model in sum-to-zero (effect) coding, solved by numpy.linalg.lstsq: the contrast of two
    levels, its se from the pooled residual variance, and the residual df."""
    cols, index = [np.ones(len(y))], {}
    for name, values in [*((f, [r[f] for r in levels]) for f in levels[0]), ("block", blocks)]:
        uniq = sorted(set(values), key=str)
        for level in uniq[:-1]:  # the last level is minus the sum of the others
            index[name, level] = len(cols)
            cols.append(np.array([1.0 if v == level else -1.0 if v == uniq[-1] else 0.0 for v in values]))
        index[name, uniq[-1]] = [index[name, u] for u in uniq[:-1]]
    x = np.column_stack(cols)
    beta, rss, rank, _ = np.linalg.lstsq(x, np.array(y), rcond=None)
    c = np.zeros(x.shape[1])
    for level, sign in ((level_a, 1.0), (level_b, -1.0)):
        at = index[factor, level]
        if isinstance(at, list):
            c[at] -= sign
        else:
            c[at] += sign
    df = len(y) - rank
    s2 = float(rss[0]) / df
    return float(c @ beta), math.sqrt(s2 * c @ np.linalg.pinv(x.T @ x) @ c), df


@pytest.mark.parametrize("drop", [0, 5])  # balanced, and unbalanced (5 observations left out)
@pytest.mark.parametrize(
    ("factor", "level_a", "level_b"),
    [("tokens", "16", "4"), ("px", "48", "32"), ("kind", "cabs", "avg"), ("kind", "attn", "cabs")],
)
def test_factorial_matches_an_independent_least_squares_fit(drop: int, factor: str, level_a: str, level_b: str):
    y, levels, blocks = fig4_like(np.random.default_rng(7), drop)
    est = factorial(y, levels, blocks, factor, level_a, level_b)
    want, se, df = lstsq_contrast(y, levels, blocks, factor, level_a, level_b)
    assert est.effect == pytest.approx(want, abs=1e-10) and est.se == pytest.approx(se, rel=1e-9)
    assert est.df == df == len(y) - (1 + 2 + 1 + 1 + 2) and est.n == 3 and est.test == "factorial"
    if not drop:  # balanced: the difference of the two levels' marginal means
        mean = {
            lv: np.mean([v for v, r in zip(y, levels, strict=True) if r[factor] == lv]) for lv in (level_a, level_b)
        }
        assert est.effect == pytest.approx(mean[level_a] - mean[level_b], abs=1e-10)


def test_factorial_recovers_exact_additive_effects_with_zero_residual():
    y, levels, blocks = [], [], []
    for tok, px, s in itertools.product(TOKENS, PX, SEEDS):
        y.append(10 + 4.0 * (tok == "16") - 1.0 * (px == "48") + 2.0 * s)
        levels.append({"tokens": tok, "px": px})
        blocks.append(s)
    est = factorial(y, levels, blocks, "px", "48", "32")
    assert est.effect == pytest.approx(-1.0) and est.se == pytest.approx(0.0, abs=1e-6)
    assert est.df == 12 - (1 + 1 + 1 + 2)


def test_factorial_refuses_confounded_factors_and_unknown_levels():
    levels = [{"tokens": t, "px": "48" if t == "16" else "32"} for t in TOKENS for _ in SEEDS]
    with pytest.raises(ValueError, match="rank-deficient"):
        factorial([1.0, 2, 3, 4, 5, 6], levels, [0, 1, 2] * 2, "tokens", "16", "4")
    y, levels, blocks = fig4_like(np.random.default_rng(0))
    with pytest.raises(ValueError, match="'64'"):
        factorial(y, levels, blocks, "px", "64", "32")
