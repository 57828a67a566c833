"""``mm1 presets``, ``mm1 flops`` and ``--preset`` on every configured command."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import yaml

from mm1 import cli
from mm1.cli import main
from mm1.config import load
from mm1.config.presets import available, load_preset
from mm1.models import size
from mm1.models.flops import step_flops
from mm1.models.size import count_model, decoder_params, peak_lr


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_presets_prints_one_csv_row_per_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "name,total_params,active_params,peak_lr,weight_decay"
    rows = _csv(out)
    assert [r["name"] for r in rows] == available()
    by_name = {r["name"]: r for r in rows}
    for name in ("mini", "llm-3b-moe", "mm1-7b"):
        cfg = load_preset(name)
        total = count_model(cfg.model, cfg.tokenizer.vocab_size)["total"]
        n = decoder_params(cfg.model.decoder, cfg.model.moe, cfg.tokenizer.vocab_size).active
        row = by_name[name]
        assert (int(row["total_params"]), int(row["active_params"])) == (total.total, total.active)
        assert float(row["peak_lr"]) == pytest.approx(peak_lr(n), rel=1e-3)
        assert float(row["weight_decay"]) == pytest.approx(0.1 * peak_lr(n), rel=1e-3)
    assert int(by_name["llm-3b-moe"]["active_params"]) < int(by_name["llm-3b-moe"]["total_params"])
    assert float(by_name["llm-3b"]["peak_lr"]) == pytest.approx(5.8e-5, rel=0.02)


def test_presets_check_passes_on_real_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "--check", "mini", "mm1-ablation"]) == 0
    out, err = capsys.readouterr()
    assert len(_csv(out)) == 2
    assert "2 preset(s) match" in err


def test_presets_check_fails_and_names_the_mismatch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = size.count_model

    def off_by_one(cfg, vocab_size):
        counts = real(cfg, vocab_size)
        return {**counts, "connector": size.ParamCount(counts["connector"].total + 1, counts["connector"].active)}

    monkeypatch.setattr(size, "count_model", off_by_one)
    assert main(["presets", "--check", "mini"]) == 1
    err = capsys.readouterr().err
    assert "mini: connector: analytic" in err and "disagree" in err


def test_unknown_preset_exits_2_listing_the_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'nope'" in err and "llm-3b" in err
    assert main(["config", "show", "--preset", "nope"]) == 2


def test_config_show_with_a_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--preset", "llm-3b"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == load_preset("llm-3b").model_dump(mode="json")
    assert shown["model"]["decoder"]["hidden_size"] == 3072


def test_preset_then_config_then_json_then_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("name: mine\nmodel:\n  decoder:\n    num_layers: 6\ntrain:\n  steps: 100\n")
    args = ["--preset", "llm-3b", "--config", str(path), "--config-json", '{"train": {"steps": 50}}']
    assert main(["config", "show", *args, "--set", "train.warmup_steps=5"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["name"] == "mine"
    assert shown["model"]["decoder"]["num_layers"] == 6  # the file over the preset
    assert shown["model"]["decoder"]["hidden_size"] == 3072  # the rest of the preset kept
    assert (shown["train"]["steps"], shown["train"]["warmup_steps"]) == (50, 5)


def test_every_configured_command_takes_preset() -> None:
    p = cli.parser()
    assert p.parse_args(["config", "show", "--preset", "mini"]).preset == "mini"
    assert p.parse_args(["flops", "--preset", "mini"]).preset == "mini"
    configured = [c for c in cli.commands() if c.configured and c.name not in ("config", "flops", "plan")]
    assert {"world", "pack", "train", "encoder", "upcycle"} <= {c.name for c in configured}
    for command in configured:
        options = {a.option_strings[0] for a in command_parser(p, command.name)._actions if a.required}
        argv = [command.name, "--preset", "mini", *(x for flag in sorted(options) for x in (flag, "p"))]
        assert p.parse_args(argv).preset == "mini", command.name


def command_parser(p, name: str):
    """The argparse parser of one subcommand (to list its required options)."""
    sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[name]


def test_flops_prints_the_step_flops(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "--images-per-sequence", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("# mm1-tiny: one step = 8 sequences x 256 tokens, 2 images per sequence")
    rows = {r["component"]: float(r["flops"]) for r in _csv("\n".join(lines[1:]))}
    assert list(rows) == ["encoder", "connector", "decoder", "forward", "total"]
    expected = step_flops(load(), 2)
    assert rows == {k: pytest.approx(v, rel=1e-6) for k, v in expected.items()}
