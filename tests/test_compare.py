"""`mm1 compare`: a paper figure from per-seed run folders -- mean and 95% CI per cell, in the paper's form."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest

from mm1.cli import main
from mm1.config.study import FigureSpec
from mm1.figures.compare import drawn_metrics

T975 = {2: 12.706, 3: 4.303}  # Student's t, 97.5% quantile, n - 1 degrees of freedom for n seeds


def mean_ci(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return m, T975[len(values)] * sd / math.sqrt(len(values))


def eval_run(folder: Path, base: float, textcore: float = 40.0) -> Path:
    """A pre-trained eval folder: coco (captioning) and vqav2 (vqa) at 0/4/8 shots, TextCore.
    Decoded scores base + offset + k; likelihood scores base / 2 + offset + k (ref_nll: 2.5)."""
    folder.mkdir(parents=True)
    scores = [
        {"run": folder.name, "benchmark": b, "task": task, "shots": k, "metric": metric, "value": value}
        for b, task, off, metrics in (
            ("coco", "captioning", 0.0, ("CIDEr", "ref_nll", "ref_prob")),
            ("vqav2", "vqa", 10.0, ("accuracy", "ll_accuracy")),
        )
        for k in (0, 4, 8)
        for metric, value in zip(
            metrics, (base + off + k, *([2.5] if task == "captioning" else []), base / 2 + off + k), strict=True
        )
    ]
    scores.append({"run": folder.name, "benchmark": "textcore", "task": "multiple_choice", "shots": 0} | {
        "metric": "accuracy", "value": textcore
    })  # fmt: skip
    pl.DataFrame(scores).write_csv(folder / "scores.csv")
    pl.DataFrame(
        {
            "shots": [0, 4, 8],
            "captioning_avg": [base + k for k in (0, 4, 8)],
            "vqa_avg": [base + 10 + k for k in (0, 4, 8)],
            "average": [base + 5 + k for k in (0, 4, 8)],
            "captioning_ll": [base / 2 + k for k in (0, 4, 8)],
            "vqa_ll": [base / 2 + 10 + k for k in (0, 4, 8)],
            "average_ll": [base / 2 + 5 + k for k in (0, 4, 8)],
            "n_benchmarks": [2, 2, 2],
            "demos_dropped": [0, 0, 0],
            "textcore": [textcore] * 3,
            "multiple_choice": [None, None, None],
            "average_ll_shuffled": [base / 2 + 3, None, None],  # the shuffled-image control: 0-shot only
            "image_gain": [2.0, None, None],
        }
    ).write_csv(folder / "summary.csv")
    return folder


def sft_run(folder: Path, base: float) -> Path:
    """An sft_eval folder: vqav2 and textvqa 0-shot, multiple choice."""
    folder.mkdir(parents=True)
    scores = [
        {"run": folder.name, "benchmark": b, "task": t, "shots": 0, "metric": "accuracy", "value": base + off}
        for b, t, off in (("vqav2", "vqa", 0.0), ("textvqa", "vqa", 2.0), ("multiple_choice", "multiple_choice", 30.0))
    ]
    pl.DataFrame(scores).write_csv(folder / "scores.csv")
    pl.DataFrame(
        {"shots": [0], "captioning_avg": [None], "vqa_avg": [base + 1], "average": [base + 1], "n_benchmarks": [2]}
        | {"captioning_ll": [None], "vqa_ll": [None], "average_ll": [None]}
        | {"demos_dropped": [0], "textcore": [None], "multiple_choice": [base + 30]}
    ).write_csv(folder / "summary.csv")
    return folder


def train_run(folder: Path, final_loss: float, peak: float, steps: int = 20) -> Path:
    """metrics.csv: loss 9 until the last 10% of steps, then ``final_loss``; lr warms up to ``peak`` and decays."""
    folder.mkdir(parents=True)
    tail = steps // 10
    pl.DataFrame(
        {
            "step": list(range(1, steps + 1)),
            "loss": [9.0] * (steps - tail) + [final_loss] * tail,
            "lr": [peak * min(s / 5, 1.0) * (1 - s / (2 * steps)) / (1 - 5 / (2 * steps)) for s in range(1, steps + 1)],
            "grad_norm": [1.0] * steps,
        }
    ).write_csv(folder / "metrics.csv")
    return folder


def spec_json(**fields) -> str:
    return FigureSpec(**{"title": "A figure"} | fields).model_dump_json()


def run_compare(out: Path, spec: str, cells: list[tuple[str, Path]], meta: dict | None = None, fig: str = "f") -> int:
    argv = ["compare", "--id", fig, "--spec", spec, "--out", str(out)]
    argv += [a for name, folder in cells for a in ("--cell", f"{name}={folder}")]
    rows = [{"cell": cell} | attrs for cell, attrs in (meta or {}).items()]  # --meta is a list of rows
    return main(argv + (["--meta", json.dumps(rows)] if meta is not None else []))


def row(table: pl.DataFrame, cell: str, metric: str) -> dict:
    return table.filter((pl.col("cell") == cell) & (pl.col("metric") == metric)).row(0, named=True)


def is_png(path: Path) -> bool:
    return path.read_bytes()[:4] == b"\x89PNG"


# --- bars: mean and CI over seeds, the seeds table, the paper column --------------------------


@pytest.fixture
def bars(tmp_path: Path) -> tuple[Path, dict[str, list[float]]]:
    bases = {"abl": [10.0, 12.0, 17.0], "res-64": [20.0, 21.0, 25.0]}
    cells = [(c, eval_run(tmp_path / "eval" / f"{c}-s{s}", b)) for c, bs in bases.items() for s, b in enumerate(bs)]
    spec = spec_json(experiments=["abl", "res-64"], paper={"res-64": {"0-shot": 33.3}})
    assert run_compare(tmp_path / "figures", spec, cells, fig="table1") == 0
    return tmp_path / "figures", bases


def test_bars_give_each_cell_its_mean_and_student_t_ci(bars):
    out, bases = bars
    table = pl.read_csv(out / "table1.csv")
    assert table.columns == ["figure", "cell", "metric", "n_seeds", "mean", "ci95", "low", "high", "paper"]
    for cell, bs in bases.items():
        mean, ci = mean_ci([b + 5 + 4 for b in bs])  # the 4-shot average of each seed
        got = row(table, cell, "4-shot")
        assert got["n_seeds"] == 3 and got["mean"] == pytest.approx(mean) and got["ci95"] == pytest.approx(ci, rel=1e-9)
        assert (got["low"], got["high"]) == pytest.approx((mean - ci, mean + ci))
    assert row(table, "abl", "textcore")["ci95"] == 0.0
    assert is_png(out / "table1.png")
    prov = json.loads((out / "table1.provenance.json").read_text())
    assert len(prov["inputs"]) == 12 and prov["config"]["spec"]["experiments"] == ["abl", "res-64"]


def test_the_seeds_table_holds_every_metric_of_every_run(bars):
    out, _ = bars
    seeds = pl.read_csv(out / "table1.seeds.csv")
    assert seeds.columns == ["figure", "cell", "seed", "run", "metric", "value"]
    metrics = [f"{t}{k}-shot{ll}" for k in (0, 4, 8) for t in ("", "captioning ", "vqa ") for ll in ("", " ll")]
    metrics += ["textcore"] + [f"{b} {k}-shot{ll}" for k in (0, 4, 8) for b in ("coco", "vqav2") for ll in ("", " ll")]
    metrics += ["0-shot image gain"]
    assert set(seeds["metric"]) == set(metrics) and seeds.height == 2 * 3 * len(metrics)
    abl = seeds.filter((pl.col("cell") == "abl") & (pl.col("metric") == "vqav2 8-shot")).sort("seed")
    assert abl["seed"].to_list() == [0, 1, 2] and abl["run"].to_list() == ["abl-s0", "abl-s1", "abl-s2"]
    assert abl["value"].to_list() == [28.0, 30.0, 35.0]  # base + 10 + 8


def test_likelihood_metrics_come_from_the_ll_columns_and_rows(bars):
    seeds = pl.read_csv(bars[0] / "table1.seeds.csv").filter((pl.col("cell") == "abl") & (pl.col("seed") == 1))
    value = dict(zip(seeds["metric"], seeds["value"], strict=True))  # base 12
    assert (value["4-shot ll"], value["captioning 4-shot ll"], value["vqa 4-shot ll"]) == (15.0, 10.0, 20.0)
    assert (value["coco 8-shot ll"], value["vqav2 0-shot ll"]) == (14.0, 16.0)  # ref_prob, ll_accuracy rows
    assert (value["coco 8-shot"], value["4-shot"]) == (20.0, 21.0)  # CIDEr row; the decoded average
    assert not any("nll" in m for m in value)  # ref_nll (lower is better) is no metric
    assert value["0-shot image gain"] == 2.0 and "4-shot image gain" not in value  # summary's image_gain


def test_the_paper_column_is_filled_only_where_the_spec_gives_a_value(bars):
    table = pl.read_csv(bars[0] / "table1.csv")
    given = table.filter(pl.col("paper").is_not_null())
    assert given.select("cell", "metric", "paper").rows() == [("res-64", "0-shot", 33.3)]


def test_one_seed_leaves_the_ci_empty(tmp_path: Path):
    cells = [("abl", eval_run(tmp_path / "abl", 10.0))]
    assert run_compare(tmp_path / "out", spec_json(experiments=["abl"]), cells) == 0
    got = row(pl.read_csv(tmp_path / "out/f.csv"), "abl", "0-shot")
    assert got["mean"] == 15.0 and got["ci95"] is None and got["low"] is None


def test_hue_and_x_keys_become_columns_and_the_bars_group_by_them(tmp_path: Path):
    cells, meta = [], {}
    for kind in ("avg_pool", "c_abstractor"):
        for tokens in (4, 16):
            name = f"{kind}-{tokens}"
            cells += [(name, eval_run(tmp_path / f"{name}-s{s}", tokens + s)) for s in range(2)]
            meta[name] = {"model.connector.num_tokens": tokens, "model.encoder.image_size": 32}
            meta[name] |= {"model.connector.kind": kind, "decoder_params": 1000, "effective_resolution": 32}
    x = ["model.connector.num_tokens", "model.encoder.image_size"]
    spec = spec_json(experiments=list(meta), x=x, hue="model.connector.kind", metrics=["0-shot", "8-shot"])
    assert run_compare(tmp_path / "out", spec, cells, meta, fig="fig4") == 0
    table = pl.read_csv(tmp_path / "out/fig4.csv")
    assert table.columns[-3:] == [*x, "model.connector.kind"]
    got = row(table, "c_abstractor-16", "8-shot")
    assert (got["model.connector.num_tokens"], got["model.connector.kind"]) == (16, "c_abstractor")
    assert is_png(tmp_path / "out/fig4.png")


# --- lr_sweep -----------------------------------------------------------------------------------


def test_lr_sweep_picks_each_sizes_best_lr_and_fits_the_law(tmp_path: Path):
    slope, intercept = -0.5, 0.25
    cells, meta, best = [], {}, {}
    for size in (1e5, 1e6, 1e7):
        best[size] = math.exp(slope * math.log(size) + intercept)
        for factor in (0.3, 1.0, 3.0):
            name = f"n{size:.0e}-x{factor}"
            loss = 2.0 + math.log(factor) ** 2  # lowest at the size's best LR
            cells += [
                (name, train_run(tmp_path / f"{name}-s{s}", loss + 0.01 * s, best[size] * factor)) for s in range(3)
            ]
            meta[name] = {"decoder_params": int(size), "effective_resolution": 32}
    spec = spec_json(experiments=list(meta), evaluation="train", form="lr_sweep")
    assert run_compare(tmp_path / "out", spec, cells, meta, fig="fig6") == 0
    table = pl.read_csv(tmp_path / "out/fig6.csv")
    assert table.columns[-1] == "decoder_params"
    picks = table.filter(pl.col("metric") == "best lr").sort("decoder_params")
    assert picks["cell"].to_list() == [f"n{s:.0e}-x1.0" for s in (1e5, 1e6, 1e7)]
    assert picks["mean"].to_list() == pytest.approx([best[s] for s in (1e5, 1e6, 1e7)])
    law = [math.exp(-0.4214 * math.log(s) - 0.5535) for s in (1e5, 1e6, 1e7)]
    assert picks["paper"].to_list() == pytest.approx(law)
    assert row(table, "fit", "slope")["mean"] == pytest.approx(slope)
    assert row(table, "fit", "intercept")["mean"] == pytest.approx(intercept)
    assert row(table, "fit", "slope")["paper"] == -0.4214
    mean, ci = mean_ci([2.0, 2.01, 2.02])
    assert row(table, "n1e+06-x1.0", "final loss")["mean"] == pytest.approx(mean)
    assert row(table, "n1e+06-x1.0", "final loss")["ci95"] == pytest.approx(ci)
    assert is_png(tmp_path / "out/fig6.png")


def test_final_loss_averages_the_last_tenth_and_peak_lr_is_the_largest(tmp_path: Path):
    cells = [("a", train_run(tmp_path / "a", 1.5, 3e-3, steps=40))]
    spec = spec_json(experiments=["a"], evaluation="train")
    assert run_compare(tmp_path / "out", spec, cells) == 0
    table = pl.read_csv(tmp_path / "out/f.csv")
    assert row(table, "a", "final loss")["mean"] == 1.5  # the last 4 of 40 rows
    assert row(table, "a", "peak lr")["mean"] == pytest.approx(3e-3)


# --- benchmarks and sweep -----------------------------------------------------------------------


def test_benchmarks_of_the_eval_stage_form_a_table_per_shot(tmp_path: Path):
    cells = [
        (c, eval_run(tmp_path / f"{c}-s{s}", b + s)) for c, b in (("final", 30.0), ("final-moe", 35.0)) for s in (0, 1)
    ]
    spec = spec_json(experiments=["final", "final-moe"], form="benchmarks", paper={"final": {"coco 0-shot": 73.5}})
    assert run_compare(tmp_path / "out", spec, cells, fig="table3") == 0
    table = pl.read_csv(tmp_path / "out/table3.csv")
    assert row(table, "final", "coco 0-shot")["paper"] == 73.5
    mean, ci = mean_ci([30.0, 31.0])  # coco 0-shot of the two seeds
    assert row(table, "final", "coco 0-shot")["mean"] == mean
    assert row(table, "final", "coco 0-shot")["ci95"] == pytest.approx(ci)
    assert is_png(tmp_path / "out/table3.png")
    drawn = drawn_metrics(FigureSpec.model_validate_json(spec), table["metric"].unique().to_list())
    assert sorted(drawn) == sorted(f"{b} {k}-shot" for b in ("coco", "vqav2") for k in (0, 4, 8))  # decoded, as Table 3


def test_sft_benchmarks_hold_each_benchmark_and_multiple_choice(tmp_path: Path):
    cells = [
        (c, sft_run(tmp_path / f"{c}-s{s}", b + s))
        for c, b in (("final", 60.0), ("final-moe", 62.0))
        for s in (0, 1, 2)
    ]
    paper = {"final": {"vqav2": 82.0}, "final-moe": {"vqav2": 82.5}}
    spec = spec_json(experiments=["final", "final-moe"], evaluation="sft_eval", form="benchmarks", paper=paper)
    assert run_compare(tmp_path / "out", spec, cells, fig="table4") == 0
    table = pl.read_csv(tmp_path / "out/table4.csv")
    assert set(table["metric"]) == {"sft average", "vqa", "multiple choice", "vqav2", "textvqa"}
    assert row(table, "final-moe", "multiple choice")["mean"] == pytest.approx(93.0)
    assert row(table, "final-moe", "vqav2")["paper"] == 82.5 and row(table, "final", "textvqa")["paper"] is None
    assert is_png(tmp_path / "out/table4.png")


def sweep_cells(tmp_path: Path) -> tuple[list[tuple[str, Path]], dict]:
    settings = {"abl": (32, 100), "res-64": (64, 100), "split": (64 * 2, 100), "ckpt-50": (32, 50)}
    cells = [
        (c, sft_run(tmp_path / f"{c}-s{s}", res / 4 + steps / 10 + s))
        for c, (res, steps) in settings.items()
        for s in (0, 1)
    ]
    meta = {
        c: {"effective_resolution": res, "train.steps": steps, "decoder_params": 1}
        for c, (res, steps) in settings.items()
    }
    return cells, meta


def test_sweep_draws_the_metric_against_each_x_key(tmp_path: Path):
    cells, meta = sweep_cells(tmp_path)
    spec = spec_json(
        experiments=list(meta), evaluation="sft_eval", form="sweep", x=["effective_resolution", "train.steps"]
    )
    assert run_compare(tmp_path / "out", spec, cells, meta, fig="fig7") == 0
    table = pl.read_csv(tmp_path / "out/fig7.csv")
    assert table.columns[-2:] == ["effective_resolution", "train.steps"]
    assert row(table, "split", "sft average")["mean"] == pytest.approx(64 * 2 / 4 + 10 + 1 + 0.5)
    assert is_png(tmp_path / "out/fig7.png")


# --- errors ---------------------------------------------------------------------------------------


def error(capsys, code: int) -> str:
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_a_bad_spec_field_is_named(tmp_path: Path, capsys):
    spec = json.loads(spec_json(experiments=["a"])) | {"form": "pie"}
    err = error(capsys, run_compare(tmp_path, json.dumps(spec), [("a", eval_run(tmp_path / "a", 1.0))]))
    assert "--spec is not a valid figure spec: form:" in err


def test_a_missing_summary_names_the_cell_the_file_and_the_stage(tmp_path: Path, capsys):
    (tmp_path / "a-s1").mkdir()
    cells = [("a", eval_run(tmp_path / "a-s0", 1.0)), ("a", tmp_path / "a-s1")]
    err = error(capsys, run_compare(tmp_path / "out", spec_json(experiments=["a"]), cells))
    assert f"cell 'a' (seed 1): {tmp_path / 'a-s1/summary.csv'} does not exist; run the eval stage" in err


def test_a_summary_without_its_columns_is_refused(tmp_path: Path, capsys):
    folder = eval_run(tmp_path / "a", 1.0)
    pl.DataFrame({"shots": [0], "average": [1.0]}).write_csv(folder / "summary.csv")
    err = error(capsys, run_compare(tmp_path / "out", spec_json(experiments=["a"]), [("a", folder)]))
    assert "summary.csv lacks the columns ['captioning_avg'" in err and "rerun its eval stage" in err


def test_a_missing_meta_key_is_named(tmp_path: Path, capsys):
    cells, meta = sweep_cells(tmp_path)
    del meta["ckpt-50"]["train.steps"]
    spec = spec_json(
        experiments=list(meta), evaluation="sft_eval", form="sweep", x=["effective_resolution", "train.steps"]
    )
    err = error(capsys, run_compare(tmp_path / "out", spec, cells, meta))
    assert "--meta gives cell 'ckpt-50' no value of ['train.steps']" in err


def test_cells_must_be_the_specs_experiments(tmp_path: Path, capsys):
    cells = [("a", eval_run(tmp_path / "a", 1.0))]
    err = error(capsys, run_compare(tmp_path / "out", spec_json(experiments=["a", "b"]), cells))
    assert "without --cell ['b']" in err


def test_an_unknown_metric_lists_the_known_ones(tmp_path: Path, capsys):
    cells = [("a", eval_run(tmp_path / "a", 1.0))]
    err = error(capsys, run_compare(tmp_path / "out", spec_json(experiments=["a"], metrics=["9-shot"]), cells))
    assert "spec.metrics ['9-shot'] are not metrics of these runs" in err and "0-shot" in err


def test_a_cell_without_a_folder_is_refused(tmp_path: Path, capsys):
    err = error(
        capsys, main(["compare", "--id", "f", "--spec", spec_json(experiments=["a"]), "--cell", "a", "--out", "x"])
    )
    assert "--cell 'a' is not NAME=RUN_DIR" in err
