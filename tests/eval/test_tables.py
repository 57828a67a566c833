"""summary.csv and metrics.json from scores.csv rows: the decoded and the likelihood averages, by hand."""

from __future__ import annotations

import polars as pl
import pytest

from mm1.eval.tables import metrics_json, summarise


def _rows(shots: int, with_ll: bool) -> list[dict]:
    decoded = [("coco", "captioning", "CIDEr", 30.0, 2), ("nocaps", "captioning", "CIDEr", 10.0, 1),
               ("vqav2", "vqa", "accuracy", 50.0, 0)]  # fmt: skip
    ll = [("coco", "captioning", "ref_nll", 2.0, 3), ("coco", "captioning", "ref_prob", 13.5, 3),
          ("nocaps", "captioning", "ref_nll", 3.0, 4), ("nocaps", "captioning", "ref_prob", 5.0, 4),
          ("vqav2", "vqa", "ll_accuracy", 71.0, 0)]  # fmt: skip
    return [
        {"benchmark": b, "task": t, "shots": shots, "metric": m, "value": v, "demos_dropped": d}
        for b, t, m, v, d in decoded + (ll if with_ll else [])
    ]


def test_summary_averages_each_kind_of_score_over_its_benchmarks() -> None:
    tc = {"benchmark": "textcore", "task": "multiple_choice", "shots": 0, "metric": "accuracy", "value": 60.0}
    scores = pl.DataFrame(_rows(0, True) + _rows(4, True) + [tc | {"demos_dropped": 0}])
    summary = summarise(scores)
    row = summary.row(1, named=True)
    assert (row["shots"], row["n_benchmarks"], row["demos_dropped"]) == (4, 3, 3)  # decoded rows only
    assert (row["captioning_avg"], row["vqa_avg"]) == (20.0, 50.0)
    assert row["average"] == pytest.approx(90.0 / 3)
    assert (row["captioning_ll"], row["vqa_ll"]) == (pytest.approx(9.25), 71.0)  # ref_prob rows; not ref_nll
    assert row["average_ll"] == pytest.approx((13.5 + 5.0 + 71.0) / 3)
    assert row["textcore"] == 60.0 and row["multiple_choice"] is None
    metrics = metrics_json(scores, summary)["4shot"]
    assert (metrics["coco"], metrics["coco ll"], metrics["coco ref_nll"], metrics["vqav2 ll"]) == (
        30.0,
        13.5,
        2.0,
        71.0,
    )
    assert metrics["average_ll"] == pytest.approx(row["average_ll"])


def test_nocaps_domain_rows_reach_metrics_json_but_not_the_averages() -> None:
    domain = {"benchmark": "nocaps/out-domain", "task": "captioning_domain", "shots": 0, "metric": "CIDEr",
              "value": 99.0, "demos_dropped": 0}  # fmt: skip
    scores = pl.DataFrame(_rows(0, False) + [domain])
    summary = summarise(scores)
    assert summary["captioning_avg"][0] == pytest.approx(20.0)  # coco 30 and nocaps 10 only
    assert metrics_json(scores, summary)["0shot"]["nocaps/out-domain"] == 99.0


def test_without_likelihood_rows_the_ll_columns_are_empty() -> None:
    summary = summarise(pl.DataFrame(_rows(0, False)))
    assert summary.columns[:7] == ["shots", "captioning_avg", "vqa_avg", "average", "captioning_ll", "vqa_ll",
                                   "average_ll"]  # fmt: skip
    assert summary["average_ll"].is_null().all() and summary["average"][0] == pytest.approx(30.0)
    assert "average_ll" not in metrics_json(pl.DataFrame(_rows(0, False)), summary)["0shot"]


def test_image_gain_is_the_zero_shot_likelihood_average_minus_the_shuffled_control() -> None:
    control = [
        ("coco", "captioning", "ref_prob_shuffled", 7.5, 3),
        ("nocaps", "captioning", "ref_prob_shuffled", 4.0, 4),
        ("coco", "captioning", "ref_nll_shuffled", 2.6, 3),
        ("vqav2", "vqa", "ll_accuracy_shuffled", 41.0, 0),
    ]
    rows = [{"benchmark": b, "task": t, "shots": 0, "metric": m, "value": v, "demos_dropped": d}
            for b, t, m, v, d in control]  # fmt: skip
    scores = pl.DataFrame(_rows(0, True) + _rows(4, True) + rows)
    summary = summarise(scores)
    zero, four = summary.row(0, named=True), summary.row(1, named=True)
    assert zero["average_ll"] == pytest.approx((13.5 + 5.0 + 71.0) / 3)  # the control is not averaged in
    assert zero["average_ll_shuffled"] == pytest.approx((7.5 + 4.0 + 41.0) / 3)
    assert zero["image_gain"] == pytest.approx((13.5 + 5.0 + 71.0 - 7.5 - 4.0 - 41.0) / 3)
    assert four["image_gain"] is None and four["average_ll_shuffled"] is None
    metrics = metrics_json(scores, summary)
    assert metrics["0shot"]["image_gain"] == pytest.approx(zero["image_gain"])
    assert (metrics["0shot"]["vqav2 ll shuffled"], metrics["0shot"]["coco ref_nll shuffled"]) == (41.0, 2.6)
    assert "image_gain" not in metrics["4shot"]
