"""Means, differences and effects over seeds with Student-t confidence intervals, p-values and the
minimum detectable effect; Holm's adjustment of a family of p-values.

No scipy. Figure CIs (:func:`mean_ci`) use the three-decimal table ``T975`` of two-sided 97.5% t
quantiles for 1-30 degrees of freedom and 1.96 beyond (t_0.975 at 30 df is 2.042, at 60 df 2.000).
The lessons' tests (:func:`welch`, :func:`paired`, :func:`factorial`) use the Student-t distribution
computed to double precision: :func:`t_cdf` from the regularized incomplete beta function
(a continued fraction, evaluated by the modified Lentz method) and :func:`t_quantile` by bisection
on it; both take real (Welch-Satterthwaite) degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# t_{0.975, df} for df = 1..30
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
ALPHA = 0.05  # two-sided level of every CI and test
POWER = 0.80  # the power at which the minimum detectable effect is stated


def t975(df: float) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (df >= 1, rounded down)."""
    if not df >= 1:
        raise ValueError(f"a confidence interval needs at least 1 degree of freedom, got {df}")
    k = int(math.floor(df))
    return T975[k - 1] if k <= len(T975) else 1.96


# --- the Student-t distribution ------------------------------------------------------------------


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (converges fast for x < (a + 1) / (a + b + 2))."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # even term d_2m
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),  # odd term d_2m+1
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0 <= x <= 1):
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b  # I_x(a, b) = 1 - I_{1-x}(b, a)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom: 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2."""
    if not df > 0:
        raise ValueError(f"Student's t needs df > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    t2 = t * t
    if t2 < df:  # x = df / (df + t^2) near 1: use 1 - x = t^2 / (df + t^2), computed without cancellation
        tail = 0.5 * (1.0 - betainc(0.5, df / 2.0, t2 / (df + t2)))  # P(T > |t|)
    else:
        tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t2))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0 < p < 1), by bisection on :func:`t_cdf`."""
    if not 0 < p < 1:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


def two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|)."""
    return min(1.0, 2.0 * t_cdf(-abs(t), df))


def mde(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of a two-sided level-``alpha`` t test at ``power``:
    (t_{1-alpha/2, df} + t_{power, df}) * se."""
    return (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * se


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order: sort ascending p_(1) <= ... <= p_(m);
    adjusted p_(i) = max over j <= i of min(1, (m - j + 1) * p_(j)). Rejecting where the adjusted
    p < alpha keeps the family-wise error rate at alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


# --- estimates -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Mean of n values with the half-width of its 95% CI (nan when n < 2)."""

    mean: float
    ci95: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        return self.mean + self.ci95


def _var(values: Sequence[float], mean: float) -> float:
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def mean_ci(values: Sequence[float]) -> Estimate:
    """Mean +- t_{0.975,n-1} * sd / sqrt(n); the half-width is nan for fewer than 2 values."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_ci needs at least one value")
    n = len(vals)
    mean = sum(vals) / n
    if n < 2:
        return Estimate(mean, math.nan, n)
    return Estimate(mean, t975(n - 1) * math.sqrt(_var(vals, mean) / n), n)


@dataclass(frozen=True)
class Effect:
    """An effect with its standard error on ``df`` degrees of freedom (se nan: no CI, e.g. 1 seed)."""

    effect: float
    se: float
    df: float
    n: int
    test: str

    @property
    def ci95(self) -> float:
        """Half-width of the two-sided 95% CI: t_{0.975, df} * se."""
        return math.nan if math.isnan(self.se) else t_quantile(1 - ALPHA / 2, self.df) * self.se

    @property
    def low(self) -> float:
        return self.effect - self.ci95

    @property
    def high(self) -> float:
        return self.effect + self.ci95

    @property
    def p(self) -> float:
        """Two-sided p-value of effect = 0."""
        if math.isnan(self.se):
            return math.nan
        if self.se == 0:
            return 0.0 if self.effect else 1.0
        return two_sided_p(self.effect / self.se, self.df)

    @property
    def mde(self) -> float:
        """The minimum detectable effect (:func:`mde`)."""
        return math.nan if math.isnan(self.se) else mde(self.se, self.df)


def _floats(values: Sequence[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{what} needs at least one value")
    return out


def welch(a: Sequence[float], b: Sequence[float]) -> Effect:
    """mean(a) - mean(b) of independent samples: se = sqrt(var(a)/n_a + var(b)/n_b), df by
    Welch-Satterthwaite. n is min(n_a, n_b); se is nan when a side has fewer than 2 values."""
    a, b = _floats(a, "welch: side a"), _floats(b, "welch: side b")
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    n = min(len(a), len(b))
    if n < 2:
        return Effect(ma - mb, math.nan, math.nan, n, "welch")
    va, vb = _var(a, ma) / len(a), _var(b, mb) / len(b)
    spread = va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)
    df = (va + vb) ** 2 / spread if spread else float(n - 1)  # no spread on either side: se = 0 anyway
    return Effect(ma - mb, math.sqrt(va + vb), df, n, "welch")


def paired(a: Sequence[float], b: Sequence[float]) -> Effect:
    """mean_s(a_s - b_s) over pairs s: se = sd(d) / sqrt(n), df = n - 1 (nan for fewer than 2 pairs)."""
    a, b = _floats(a, "paired: side a"), _floats(b, "paired: side b")
    if len(a) != len(b):
        raise ValueError(f"paired needs one a and one b per pair, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b, strict=True)]
    n, mean = len(d), sum(d) / len(d)
    if n < 2:
        return Effect(mean, math.nan, math.nan, n, "paired")
    return Effect(mean, math.sqrt(_var(d, mean) / n), float(n - 1), n, "paired")


def factorial(
    y: Sequence[float],
    levels: Sequence[dict[str, str]],
    blocks: Sequence[object],
    factor: str,
    level_a: str,
    level_b: str,
) -> Effect:
    """Main-effects OLS: y_i = mu + sum_f beta_f[levels_i[f]] + gamma[blocks_i] + e_i (treatment coding,
    each factor's and the blocks' first level the reference), and the contrast
    beta_factor[level_a] - beta_factor[level_b] with se = sqrt(s^2 c'(X'X)^-1 c), s^2 = RSS / (N - p).
    In a balanced design the estimate is the difference of the two levels' marginal means. n is the
    number of blocks (seeds)."""
    n_obs = len(y)
    if not n_obs or len(levels) != n_obs or len(blocks) != n_obs:
        raise ValueError(f"factorial needs one level set and block per value: {n_obs}, {len(levels)}, {len(blocks)}")
    names = list(levels[0])
    if any(list(row) != names for row in levels):
        raise ValueError(f"factorial: every value needs levels of the same factors {names}")
    columns: list[np.ndarray] = [np.ones(n_obs)]
    where: dict[tuple[str, str], int] = {}
    for name, values in [*((f, [row[f] for row in levels]) for f in names), ("block", list(blocks))]:
        for level in list(dict.fromkeys(values))[1:]:  # first level: the reference (no column)
            where[name, level] = len(columns)
            columns.append(np.array([float(v == level) for v in values]))
    known = set(row[factor] for row in levels) if factor in names else set()
    if level_a not in known or level_b not in known or level_a == level_b:
        raise ValueError(f"factorial: {factor!r} levels {level_a!r} vs {level_b!r}; the data have {sorted(known)}")
    x, yv = np.column_stack(columns), np.asarray(y, dtype=float)
    n_blocks, p = len(set(blocks)), x.shape[1]
    contrast = np.zeros(p)
    for level, sign in ((level_a, 1.0), (level_b, -1.0)):  # the reference level's coefficient is 0
        if (factor, level) in where:
            contrast[where[factor, level]] = sign
    if np.linalg.matrix_rank(x) < p:
        raise ValueError(f"factorial: the design of {p} columns is rank-deficient (a factor confounded with another)")
    xtx_inv = np.linalg.inv(x.T @ x)
    beta = xtx_inv @ x.T @ yv
    estimate = float(contrast @ beta)
    if n_obs - p < 1:
        return Effect(estimate, math.nan, math.nan, n_blocks, "factorial")
    rss = float(np.sum((yv - x @ beta) ** 2))
    se = math.sqrt(rss / (n_obs - p) * float(contrast @ xtx_inv @ contrast))
    return Effect(estimate, se, float(n_obs - p), n_blocks, "factorial")
