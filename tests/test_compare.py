"""`mm1 compare`: a paper figure's cells side by side, from the eval stages' summary.csv files."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from mm1.cli import main


def summary(path: Path, base: float, mc: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "shots": [0, 4, 8],
            "captioning_avg": [base, base + 1, base + 2],
            "vqa_avg": [base * 2, base * 2, base * 2],
            "average": [base + 0.5, base + 1.5, base + 2.5],
            "n_benchmarks": [8, 8, 8],
            "demos_dropped": [0, 0, 3],
            "textcore": [40.0, 40.0, 40.0],
            "multiple_choice": [mc, mc, mc],
        }
    ).write_csv(path)
    return path


def test_compare_writes_the_cells_in_order_with_provenance(tmp_path: Path, capsys):
    a, b = summary(tmp_path / "a/summary.csv", 10.0), summary(tmp_path / "b/summary.csv", 20.0)
    out = tmp_path / "figures"
    argv = ["compare", "--id", "fig4", "--title", "Connectors", "--cell", f"b-cell={b}", "--cell", f"a-cell={a}"]
    assert main([*argv, "--out", str(out)]) == 0
    table = pl.read_csv(out / "fig4.csv")
    assert table["cell"].to_list() == ["b-cell"] * 3 + ["a-cell"] * 3
    assert table.filter((pl.col("cell") == "a-cell") & (pl.col("shots") == 8))["average"].item() == 12.5
    assert (out / "fig4.png").read_bytes()[:4] == b"\x89PNG"
    prov = json.loads((out / "fig4.provenance.json").read_text())
    assert prov["config"]["cells"] == ["b-cell", "a-cell"] and set(prov["inputs"]) == {"a-cell", "b-cell"}
    assert "fig4" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("cell", "message"),
    [("no-equals-sign", "is not NAME=PATH"), ("x={missing}", "does not exist; run its eval stage first")],
)
def test_bad_cells_are_one_line_errors(tmp_path: Path, capsys, cell: str, message: str):
    cell = cell.format(missing=tmp_path / "nope.csv")
    assert main(["compare", "--id", "f", "--title", "t", "--cell", cell, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_summary_without_the_averages_is_refused_naming_it(tmp_path: Path, capsys):
    bad = tmp_path / "s.csv"
    pl.DataFrame({"shots": [0], "average": [1.0]}).write_csv(bad)
    assert main(["compare", "--id", "f", "--title", "t", "--cell", f"x={bad}", "--out", str(tmp_path)]) == 1
    assert f"{bad} (cell 'x') lacks the columns" in capsys.readouterr().err
