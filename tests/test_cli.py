"""The ``mm1`` command: config show/schema, --config/--config-json/--set, exit codes and messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mm1.cli import main
from mm1.config import RunConfig, dump, load
from mm1.config.schema import render


def _show(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["config", "show", *args]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_show_without_arguments_prints_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show"]) == 0
    assert capsys.readouterr().out == dump(RunConfig())


def test_show_applies_set(capsys: pytest.CaptureFixture[str]) -> None:
    overrides = ["train.steps=50", "train.warmup_steps=5", "model.decoder.num_layers=3"]
    shown = _show(capsys, *(arg for o in overrides for arg in ("--set", o)))
    assert shown["train"]["steps"] == 50
    assert shown["model"]["decoder"]["num_layers"] == 3
    expected = yaml.safe_load(dump(load(None, overrides)))
    assert shown == expected


def test_bad_override_exits_2_and_names_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--set", "train.stepz=5"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("mm1 config: error: ")
    assert len(err.splitlines()) == 1
    assert "train.stepz" in err
    assert "Traceback" not in err


def test_bad_value_exits_2_and_names_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--set", "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_override_without_equals_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--set", "train.steps"]) == 2
    assert "section.field=value" in capsys.readouterr().err


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_config_json_merges_over_config_and_set_wins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("name: from-file\ntrain:\n  steps: 7\n  warmup_steps: 2\n  lr: 0.01\n")
    shown = _show(capsys, "--config", str(path), "--config-json", json.dumps({"train": {"steps": 9}}))
    assert shown["name"] == "from-file"  # untouched by the JSON
    assert shown["train"]["lr"] == 0.01  # a deep merge keeps the file's other train keys
    assert shown["train"]["steps"] == 9  # the JSON wins over the file

    shown = _show(
        capsys, "--config", str(path), "--config-json", json.dumps({"train": {"steps": 9}}), "--set", "train.steps=11"
    )
    assert shown["train"]["steps"] == 11


def test_config_json_alone_is_enough(capsys: pytest.CaptureFixture[str]) -> None:
    assert _show(capsys, "--config-json", '{"model": {"moe": {"num_experts": 4}}}')["model"]["moe"]["num_experts"] == 4


def test_invalid_json_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--config-json", "{train: 1"]) == 2
    err = capsys.readouterr().err
    assert "--config-json is not valid JSON" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("text", ["[1, 2]", "3", "null"])
def test_json_that_is_not_an_object_is_a_clear_error(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--config-json", text]) == 2
    assert "--config-json" in capsys.readouterr().err


def test_config_json_errors_name_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--config-json", '{"train": {"lr_decay": "cos"}}']) == 2
    err = capsys.readouterr().err
    assert "train.lr_decay" in err
    assert "--config-json" in err  # the source is named


def test_schema_prints_the_rendered_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    assert capsys.readouterr().out == render()


def test_schema_write_then_check_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "schemas" / "config.schema.json"
    assert main(["config", "schema", "--write", str(path)]) == 0
    assert path.read_text() == render()
    assert main(["config", "schema", "--check", str(path)]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("content", ["{}\n", None])
def test_schema_check_of_stale_or_missing_file_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    path = tmp_path / "config.schema.json"
    if content is not None:
        path.write_text(content)
    assert main(["config", "schema", "--check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"mm1 config schema --write {path}" in err
    assert "out of date" in err


def test_console_script_runs() -> None:
    bin_dir = str(Path(sys.executable).parent)
    exe = shutil.which("mm1", path=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    assert exe is not None, "the mm1 console script is not installed (pip install -e .)"
    out = subprocess.run([exe, "config", "show"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout) == yaml.safe_load(dump(RunConfig()))


def test_console_script_reports_config_errors_with_exit_2() -> None:
    bin_dir = str(Path(sys.executable).parent)
    exe = shutil.which("mm1", path=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    assert exe is not None
    out = subprocess.run([exe, "config", "show", "--set", "train.stepz=1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "train.stepz" in out.stderr
    assert "Traceback" not in out.stderr


def test_version_is_the_installed_packages(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"mm1 {version('mm1')}"


@pytest.mark.parametrize(
    ("flags", "level"),
    [([], "WARNING"), (["-v"], "INFO"), (["-vv"], "DEBUG"), (["-vvv"], "DEBUG"), (["--log-level", "error"], "ERROR"),
     (["-vv", "--log-level", "warning"], "WARNING")],
)  # fmt: skip
def test_verbosity_flags_set_the_log_level(flags: list[str], level: str, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    root = logging.getLogger()
    before = root.level
    try:
        assert main([*flags, "config", "show"]) == 0
        assert logging.getLevelName(root.level) == level
    finally:
        root.setLevel(before)
