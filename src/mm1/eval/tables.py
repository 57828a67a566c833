"""The eval stage's tables: summary.csv (per shot count, the averages the paper plots and their
likelihood counterparts) and metrics.json (for DVC), both from scores.csv's rows."""

from __future__ import annotations

import polars as pl

from mm1.config.eval import GENERATION_METRIC, LIKELIHOOD_METRIC

SHUFFLED_METRIC = {task: f"{name}_shuffled" for task, name in LIKELIHOOD_METRIC.items()}
"""Each task's likelihood score under the shuffled-image control (0-shot rows, :mod:`mm1.eval.ll_scores`)."""


def _task_means(metric: dict[str, str], names: tuple[str, str, str]) -> list[pl.Expr]:
    """Mean of the captioning rows, of the VQA rows and of both, each of its task's ``metric``."""
    cap = (pl.col("task") == "captioning") & (pl.col("metric") == metric["captioning"])
    vqa = (pl.col("task") == "vqa") & (pl.col("metric") == metric["vqa"])
    return [pl.col("value").filter(cap).mean().alias(names[0]), pl.col("value").filter(vqa).mean().alias(names[1]),
            pl.col("value").filter(cap | vqa).mean().alias(names[2])]  # fmt: skip


def summarise(scores: pl.DataFrame) -> pl.DataFrame:
    """Per shots: mean of the captioning benchmarks (CIDEr), of the VQA benchmarks (accuracy), of
    all of them (MM1's "k-shot average", both on 0-100 scales), the same three means of the
    likelihood scores (ref_prob, ll_accuracy; null without them), the 0-shot shuffled-image control
    (``average_ll_shuffled``; ``image_gain`` = average_ll - average_ll_shuffled, what reading the
    image adds; null at other shot counts), and TextCore / multiple choice."""
    generated = pl.any_horizontal(
        [(pl.col("task") == t) & (pl.col("metric") == m) for t, m in GENERATION_METRIC.items()]
    )
    out = (
        scores.filter(pl.col("task").is_in(["captioning", "vqa"]))
        .group_by("shots")
        .agg(
            *_task_means(GENERATION_METRIC, ("captioning_avg", "vqa_avg", "average")),
            *_task_means(LIKELIHOOD_METRIC, ("captioning_ll", "vqa_ll", "average_ll")),
            *_task_means(SHUFFLED_METRIC, ("captioning_ll_shuffled", "vqa_ll_shuffled", "average_ll_shuffled")),
            pl.col("benchmark").filter(generated).n_unique().alias("n_benchmarks"),
            pl.col("demos_dropped").filter(generated).sum().alias("demos_dropped"),
        )
        .sort("shots")
        .with_columns((pl.col("average_ll") - pl.col("average_ll_shuffled")).alias("image_gain"))
    )
    for name in ("textcore", "multiple_choice"):
        hit = scores.filter(pl.col("benchmark") == name)["value"]
        out = out.with_columns(pl.lit(float(hit[0]) if len(hit) else None, dtype=pl.Float64).alias(name))
    return out.select(
        "shots", "captioning_avg", "vqa_avg", "average", "captioning_ll", "vqa_ll", "average_ll", "n_benchmarks",
        "demos_dropped", "textcore", "multiple_choice", "captioning_ll_shuffled", "vqa_ll_shuffled",
        "average_ll_shuffled", "image_gain",
    )  # fmt: skip


def metrics_json(scores: pl.DataFrame, summary: pl.DataFrame) -> dict:
    """DVC metrics: per shots the averages and every benchmark's scores ("<name>": generation,
    "<name> ll": its 0-100 likelihood score, "<name> ref_nll", and at 0 shots "<name> ll shuffled",
    "average_ll_shuffled" and "image_gain"; NoCaps' per-domain CIDEr as "nocaps/in-domain" and so on);
    TextCore / multiple choice."""
    out: dict = {}
    averages = ("average", "captioning_avg", "vqa_avg", "average_ll", "captioning_ll", "vqa_ll")
    averages += ("average_ll_shuffled", "image_gain")
    for row in summary.iter_rows(named=True):
        out[f"{row['shots']}shot"] = {k: row[k] for k in averages if row[k] is not None}
    suffix = {GENERATION_METRIC[t]: "" for t in GENERATION_METRIC} | {"ref_nll": " ref_nll"}
    suffix |= {LIKELIHOOD_METRIC[t]: " ll" for t in LIKELIHOOD_METRIC}
    suffix |= {SHUFFLED_METRIC[t]: " ll shuffled" for t in SHUFFLED_METRIC} | {"ref_nll_shuffled": " ref_nll shuffled"}
    for row in scores.filter(pl.col("task").is_in(["captioning", "vqa", "captioning_domain"])).iter_rows(named=True):
        out[f"{row['shots']}shot"][row["benchmark"] + suffix[row["metric"]]] = row["value"]
    for row in scores.filter(pl.col("task").is_in(["multiple_choice", "yes_no", "math"])).iter_rows(named=True):
        out[row["benchmark"]] = row["value"]
    return out
