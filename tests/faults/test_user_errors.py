"""User errors are one line, ``mm1 <cmd>: error: <what>; <fix>``, with exit 2 (usage, config) or 1 (other).

Every bad invocation below runs ``mm1.cli.main`` in this process: a path that is missing, a folder
where a file is meant, a file where a folder is meant, an empty, garbage or too deeply nested file,
a number out of its range, a name that would leave its folder. Each must answer with exactly one line
on stderr that names the file or flag at fault, and no traceback. ``--debug`` shows the traceback; an
exception that is not a user's error (a bug) still prints its traceback and asks for a report.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mm1 import cli
from mm1.config.presets import load_preset
from mm1.figures.compare import compare, load_spec
from mm1.plan import PlanError, check, choose, estimate

SPEC = '{"title": "t", "experiments": ["a"], "metrics": ["m"]}'


@pytest.fixture
def bad(tmp_path: Path) -> dict[str, str]:
    """Bad inputs of every kind, by name, and an output folder ``out`` that does not exist yet."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "garbage").write_bytes(bytes(range(256)) * 3)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "deep.json").write_text("[" * 5000 + "]" * 5000)
    (tmp_path / "file.json").write_text('{"x": 1}\n')
    (tmp_path / "refs.json").write_text(
        '{"images": [{"id": 1}], "annotations": [{"image_id": 1, "caption": "a cube"}]}'
    )
    names = ("dir", "empty", "garbage", "list.yaml", "deep.json", "file.json", "refs.json", "missing", "out")
    return {name.split(".")[0]: str(tmp_path / name) for name in names} | {"spec": SPEC}


# (argv with {placeholders} of `bad`, exit code, what the line must name)
CASES = {
    # config and study files
    "config-is-a-folder": ("config show --config {dir}", 2, "{dir}"),
    "config-is-a-list": ("flops --config {list}", 2, "{list}"),
    "config-nested-too-deep": ("config show --config {deep}", 2, "{deep}"),
    "study-is-a-list": ("config show --study {list}", 2, "{list}"),
    "study-is-a-folder": ("config show --study {dir}", 2, "{dir}"),
    "schema-written-onto-a-folder": ("config schema --write {dir}", 1, "{dir}"),
    "schema-written-under-a-file": ("config schema --write {file}/x.json", 1, "{file}"),
    "schema-checked-against-garbage": ("config schema --check {garbage}", 1, "{garbage}"),
    # prediction and benchmark files
    "predictions-are-a-folder": ("eval score-captions --pred {dir} --refs {refs}", 1, "--pred {dir}"),
    "references-are-a-folder": ("eval score-captions --pred {file} --refs {dir}", 1, "--refs {dir}"),
    "predictions-nested-too-deep": ("eval score-captions --pred {deep} --refs {refs}", 1, "{deep}"),
    "vqa-files-nested-too-deep": (
        "eval score-vqa --pred {file} --questions {deep} --annotations {deep}",
        1,
        "nested too deeply",
    ),
    "predictions-are-garbage": (
        "eval score-captions --pred {garbage} --refs {refs}",
        1,
        "{garbage}",
    ),
    # tokenizer files
    "tokenizer-is-garbage": ("pack --manifest {missing} --tokenizer {garbage} --out {out}", 1, "{garbage}"),
    "tokenizer-is-empty": ("sft-pack --manifest {missing} --tokenizer {empty} --out {out}", 1, "{empty}"),
    "tokenizer-is-a-list": ("pack --manifest {missing} --tokenizer {list} --out {out}", 1, "{list}"),
    "tokenizer-is-a-folder": (
        "eval run --data {dir} --tokenizer {dir} --checkpoint {dir} --out {out}",
        1,
        "tokenizer file {dir}",
    ),
    # folders where files are meant and the other way round
    "out-is-a-file": ("world --out {file}", 2, "--out {file}"),
    "out-is-under-a-file": ("pack --manifest {missing} --tokenizer {garbage} --out {file}/sub", 2, "--out {file}/sub"),
    "init-is-a-file": ("train --packed {missing} --tokenizer {missing} --out {out} --init {file}", 2, "--init {file}"),
    "init-encoder-is-missing": (
        "train --packed {missing} --tokenizer {missing} --out {out} --init-encoder {missing}",
        2,
        "--init-encoder {missing}",
    ),
    "manifest-is-a-folder": ("tokenizer --manifest {dir} --out {out}", 1, "{dir} is a folder"),
    "pilot-seeds-are-empty": ("power --seeds {empty} --metric m --effects 1 --study-seeds 3 --out {out}", 1, "{empty}"),
    "pilot-seeds-are-garbage": (
        "power --seeds {garbage} --metric m --effects 1 --study-seeds 3 --out {out}",
        1,
        "{garbage}",
    ),
    "pilot-seeds-are-a-folder": ("power --seeds {dir} --metric m --effects 1 --study-seeds 3 --out {out}", 1, "{dir}"),
    "lessons-are-a-list": ("lessons --lessons [] --out {out}", 1, "--lessons"),
    "compare-cell-is-a-file": ("compare --id f --spec {spec} --cell a={file} --out {out}", 1, "{file}"),
    # numbers out of range
    "plan-mfu-zero": ("plan --preset mm1-3b --mfu 0", 2, "--mfu"),
    "plan-mfu-negative": ("plan --preset mm1-3b --mfu -0.5", 2, "--mfu"),
    "plan-mfu-nan": ("plan --preset mm1-3b --mfu nan", 2, "--mfu"),
    "plan-mfu-above-one": ("plan --preset mm1-3b --mfu 1.5", 2, "--mfu"),
    "plan-images-negative": ("plan --preset mm1-3b --images-per-sequence -2", 2, "--images-per-sequence"),
    "plan-nodes-zero": ("plan --preset mm1-3b --nodes 0", 2, "--nodes"),
    "flops-images-inf": ("flops --images-per-sequence inf", 2, "--images-per-sequence"),
    "power-effects-not-positive": (
        "power --seeds {empty} --metric m --effects 1,-2 --study-seeds 3 --out {out}",
        2,
        "--effects",
    ),
    "power-no-seeds": ("power --seeds {empty} --metric m --effects 1 --study-seeds 0 --out {out}", 2, "--study-seeds"),
    # names that would reach a path
    "compare-id-leaves-out": ("compare --id ../../x --spec {spec} --cell a={dir} --out {out}", 2, "--id"),
    "compare-id-absolute": ("compare --id /tmp/x --spec {spec} --cell a={dir} --out {out}", 2, "--id"),
    "preset-is-a-path": ("config show --preset ../../config/default", 2, "--preset"),
    "presets-name-is-a-path": ("presets ../x", 2, "../x"),
    # the command line itself
    "no-command": ("", 2, "command"),
    "unknown-command": ("nosuch", 2, "nosuch"),
    "flag-without-value": ("plan --mfu", 2, "--mfu"),
}


def _argv(template: str, bad: dict[str, str]) -> list[str]:
    return [part.format(**bad) for part in template.split()]


@pytest.mark.faults(item=4)
@pytest.mark.parametrize("case", list(CASES))
def test_a_user_error_is_one_line_naming_what_is_wrong(case: str, bad: dict[str, str], capsys, tmp_path) -> None:
    template, code, named = CASES[case]
    assert cli.main(_argv(template, bad)) == code, capsys.readouterr().err
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("mm1") and ": error: " in lines[0], lines[0]
    assert named.format(**bad) in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # refused before it wrote anything
    locks = {".out.lock"} | {f".out.{name}.lock" for name in ("tiny_study", "lessons", "power", "f")}  # mm1.outlock
    beside = {p.name for p in tmp_path.iterdir()} - locks  # the output lock (a figure's own in out/): empty, kept
    assert beside == {"dir", "empty", "garbage", "list.yaml", "deep.json", "file.json", "refs.json"}  # nothing else


@pytest.mark.faults(item=4)
def test_debug_shows_the_traceback_and_the_line(bad: dict[str, str], capsys) -> None:
    assert cli.main(["--debug", "config", "schema", "--write", bad["dir"]]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "IsADirectoryError" in err
    assert err.strip().splitlines()[-1].startswith(f"mm1 config: error: {bad['dir']} is a folder")


def _a_bug(args) -> int:
    raise ValueError("an internal invariant broke")  # raised outside mm1's code: not a refusal of an input


@pytest.mark.faults(item=4)
@pytest.mark.parametrize("error", [KeyError("k"), ZeroDivisionError(), None])
def test_a_bug_keeps_its_traceback_and_asks_for_a_report(monkeypatch, capsys, error) -> None:
    def bug(args) -> int:
        raise error

    monkeypatch.setattr(cli, "_cmd_flops", _a_bug if error is None else bug)
    assert cli.main(["flops"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("mm1 flops: internal error (")
    assert "please report it" in err


@pytest.mark.faults(item=4)
def test_a_multi_process_stage_relaunches_itself_with_main_s_argv(bad: dict[str, str], monkeypatch) -> None:
    """Not sys.argv: a wrapper (the fault injector, a notebook) calls main() with its own list."""
    seen = []
    monkeypatch.setattr(
        "mm1.parallel.launch.relaunch_if_needed", lambda parallel, argv, **where: seen.append(argv) or 0
    )
    monkeypatch.setattr("sys.argv", ["wrapper", "--kill-at", "somewhere"])
    argv = ["train", "--packed", bad["missing"], "--tokenizer", bad["missing"], "--out", bad["out"]]
    argv += ["--set", "parallel.world_size=2", "--set", "train.micro_batch_size=4"]
    assert cli.main(argv) == 0
    assert seen == [argv]


@pytest.mark.faults(item=7)
def test_config_show_study_validates_every_experiment_at_every_stage(tmp_path: Path, capsys) -> None:
    study = tmp_path / "study.yaml"
    # valid as a whole run; its sft stage (30 steps) cannot warm up for 40
    study.write_text(
        "study:\n  stages:\n    sft: {train.steps: 30}\n  experiments:\n    warm: {train.warmup_steps: 40}\n"
    )
    assert cli.main(["config", "show", "--study", str(study)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(study) in line and "stage sft of experiment 'warm'" in line and "warmup_steps" in line

    study.write_text("study:\n  experiments:\n    fine: {train.lr: 0.01}\n    bad-lr: {train.lr: -1}\n")
    assert cli.main(["config", "show", "--study", str(study)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "experiment 'bad-lr'" in line and "train.lr" in line and "'fine'" not in line

    study.write_text("study:\n  experiments:\n    fine: {train.lr: 0.01}\n")
    assert cli.main(["config", "show", "--study", str(study)]) == 0
    assert "2 runs x" in capsys.readouterr().err  # base and fine


@pytest.mark.faults(item=5)
@pytest.mark.parametrize("fig_id", ["../x", "../../escape", "/tmp/abs", "a/b", ".hidden", "-flag", ""])
def test_compare_refuses_an_id_that_is_not_a_plain_name(fig_id: str, tmp_path: Path) -> None:
    """The library refuses too (not only the command line): the id names the files written."""
    out = tmp_path / "a" / "b"
    with pytest.raises(ValueError, match="is not a plain name"):
        compare(fig_id, load_spec(SPEC), [], {}, out)
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.faults(item=7)
@pytest.mark.parametrize("mfu", [0, -0.4, math.nan, math.inf, 1.01, True])
def test_the_planner_refuses_an_impossible_mfu(mfu: float) -> None:
    cfg = load_preset("mm1-3b")
    for plan in (lambda: estimate(cfg, "h100-80gb", mfu), lambda: check(cfg, "h100-80gb", mfu)):
        with pytest.raises(PlanError, match="--mfu"):
            plan()
    with pytest.raises(PlanError, match="--mfu"):
        choose(cfg, "h100-80gb", nodes=4, mfu=mfu)


@pytest.mark.faults(item=7)
@pytest.mark.parametrize("images", [-1, math.nan, -math.inf])
def test_the_planner_refuses_an_impossible_image_count(images: float) -> None:
    with pytest.raises(ValueError, match="--images-per-sequence"):
        estimate(load_preset("mm1-3b"), "h100-80gb", images_per_sequence=images)
