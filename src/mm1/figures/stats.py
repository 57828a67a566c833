"""Mean and 95% confidence interval over seeds (Student's t), and the CI of a difference of means.

No scipy: the two-sided 97.5% t quantiles for 1-30 degrees of freedom are tabulated; beyond 30 the
Welch-Satterthwaite degrees of freedom are rounded down and the normal quantile (1.96) is close enough
(t_0.975 at 30 df is 2.042, at 60 df 2.000).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# t_{0.975, df} for df = 1..30
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: float) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (df >= 1, rounded down)."""
    if not df >= 1:
        raise ValueError(f"a confidence interval needs at least 1 degree of freedom, got {df}")
    k = int(math.floor(df))
    return T975[k - 1] if k <= len(T975) else 1.96


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


def diff_ci(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """mean(a) - mean(b) with Welch's 95% CI (independent runs; unequal variances). n = min(len)."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b:
        raise ValueError("diff_ci needs values on both sides")
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    n = min(len(a), len(b))
    if len(a) < 2 or len(b) < 2:
        return Estimate(ma - mb, math.nan, n)
    va, vb = _var(a, ma) / len(a), _var(b, mb) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(ma - mb, 0.0, n)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va and vb else min(len(a), len(b)) - 1
    return Estimate(ma - mb, t975(max(1.0, df)) * se, n)
