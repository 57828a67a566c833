"""Fig 6's law refit (form lr_sweep): the least-squares line through each size's best LR, beside MM1's.

The sweep below is the paper-scale grid's shape (config/study-paper.yaml): MM1's four decoder sizes
(our presets' counts) x five peak LRs an octave apart around MM1's law; each size's loss is lowest
at an LR off the law by a different factor, so the best LRs do not lie on a line and the fit is a
real least-squares problem, checked against numpy.polyfit.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from mm1.config.study import FigureSpec
from mm1.figures.compare import figure_table
from mm1.figures.forms import draw_lr_sweep, mm1_law_label
from mm1.models.size import peak_lr

SIZES = [8_977_680, 85_126_656, 301_499_392, 1_229_015_040]  # llm-9m, llm-85m, llm-302m, llm-1.2b
OCTAVES = [-2, -1, 0, 1, 2]  # the grid: law x 2^k
BEST = [1, -1, 0, 2]  # the octave at which each size's loss is lowest: not on any line through the law


def sweep() -> tuple[FigureSpec, pl.DataFrame, dict[str, dict[str, int]]]:
    """Spec, seeds table (two seeds per cell) and meta of the sweep."""
    rows, meta = [], {}
    for n, best in zip(SIZES, BEST, strict=True):
        for k in OCTAVES:
            cell = f"n{n}-k{k}"
            meta[cell] = {"decoder_params": n}
            for seed in (0, 1):
                loss = 3.0 + 0.1 * (k - best) ** 2 + 0.01 * seed
                rows += [
                    {"figure": "fig6", "cell": cell, "seed": seed, "run": f"{cell}-{seed}", "metric": "final loss"}
                    | {"value": loss},
                    {"figure": "fig6", "cell": cell, "seed": seed, "run": f"{cell}-{seed}", "metric": "peak lr"}
                    | {"value": peak_lr(n) * 2.0**k},
                ]
    spec = FigureSpec(title="Fig 6", experiments=list(meta), evaluation="train", form="lr_sweep")
    return spec, pl.DataFrame(rows), meta


def test_the_refit_is_numpys_least_squares_line_through_each_sizes_best_lr() -> None:
    spec, seeds, meta = sweep()
    table, metrics = figure_table("fig6", spec, seeds, meta)
    picks = table.filter(pl.col("metric") == "best lr").sort("decoder_params")
    assert picks["cell"].to_list() == [f"n{n}-k{b}" for n, b in zip(SIZES, BEST, strict=True)]
    best = [peak_lr(n) * 2.0**b for n, b in zip(SIZES, BEST, strict=True)]
    assert picks["mean"].to_list() == pytest.approx(best)

    slope, intercept = np.polyfit(np.log(SIZES), np.log(best), 1)  # independent least squares
    assert np.ptp(np.log(best) - (slope * np.log(SIZES) + intercept)) > 0.5  # not collinear: a real fit
    fit = {r["metric"]: r for r in table.filter(pl.col("cell") == "fit").iter_rows(named=True)}
    assert fit["slope"]["mean"] == pytest.approx(slope, rel=1e-9)
    assert fit["intercept"]["mean"] == pytest.approx(intercept, rel=1e-9)
    assert (fit["slope"]["paper"], fit["intercept"]["paper"]) == (-0.4214, -0.5535)

    right = draw_lr_sweep(spec, table, metrics, meta).axes[1]
    labels = right.get_legend_handles_labels()[1]
    ours = f"ours: ln lr = {slope:.4g} ln N {'-' if intercept < 0 else '+'} {abs(intercept):.4g}"
    assert ours in labels
    assert mm1_law_label(SIZES) in labels and "ln lr = -0.4214 ln N - 0.5535" in mm1_law_label(SIZES)


@pytest.mark.parametrize(
    ("sizes", "says"),
    [
        (SIZES, "fitted on 9M-1.2B, the sizes here"),  # the paper-scale grid
        ([349_312, 1_230_848], "extrapolated below the sizes it was fitted on 9M-1.2B"),  # the miniature study
        ([1.23e9, 3.02e9, 6.98e9], "fitted on 9M-1.2B; partly extrapolated here"),  # a grid at MM1's final sizes
        ([3.02e9, 6.98e9, 2.97e10], "extrapolated above the sizes it was fitted on 9M-1.2B"),
    ],
)
def test_mm1s_law_says_whether_it_is_extrapolated_to_the_sizes_drawn(sizes: list[float], says: str) -> None:
    assert mm1_law_label(sizes).startswith(f"MM1's law, {says}:")


def test_sizes_read_in_three_digits() -> None:
    from mm1.figures.forms import _size

    assert [_size(n) for n in (349_312, 8_977_680, 301_499_392, 1.2e9)] == ["349k", "8.98M", "301M", "1.2B"]
    assert math.isclose(float(_size(85e6)[:-1]), 85)
