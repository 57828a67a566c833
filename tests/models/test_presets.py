"""The presets (package data in src/mm1/config/preset_files): they validate, derive as documented, and their comments' arithmetic holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from mm1.config import ConfigError, RunConfig
from mm1.config.presets import PRESETS_DIR, available, deep_merge, load_preset, preset_data, preset_files
from mm1.models.size import count_model, decoder_params, peak_lr

NAMES = available()


def test_the_expected_presets_exist() -> None:
    expected = {
        "mini", "mini-s", "mini-m", "mini-l",
        "llm-9m", "llm-85m", "llm-302m", "llm-1.2b", "llm-2.9b", "llm-3b", "llm-7b", "llm-30b", "llm-3b-moe", "llm-7b-moe",
        "vit-l14-224", "vit-l14-336", "vit-l14-378", "vit-h14-224", "vit-h14-336", "vit-h14-378",
        "aim-600m", "aim-1b", "aim-3b",
        "mm1-ablation", "mm1-3b", "mm1-7b", "mm1-30b", "mm1-3b-moe", "mm1-7b-moe",
    }  # fmt: skip
    assert expected <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_validates_is_named_after_itself_and_shows_its_arithmetic(name: str) -> None:
    cfg = load_preset(name)
    assert cfg.name == name
    text = (PRESETS_DIR / f"{name}.yaml").read_text()
    assert text.startswith("#"), f"{name}.yaml should open with a comment that shows its arithmetic"
    counts = count_model(cfg.model, cfg.tokenizer.vocab_size)
    family = name.split("-")[0]
    if family in ("llm", "mini"):  # the decoder's count, exactly, with thousands separators
        dec = counts["decoder"]
        assert f"{dec.total:,}" in text and f"{dec.active:,}" in text
    elif family in ("vit", "aim"):
        assert f"{counts['encoder'].total:,}" in text
    else:
        assert f"{counts['connector'].total:,}" in text


def test_mini_is_the_default_model() -> None:
    assert load_preset("mini").model == RunConfig().model


@pytest.mark.parametrize(("name", "lr"), [("llm-3b", 5.8e-5), ("llm-7b", 4.1e-5), ("llm-30b", 2.2e-5)])
def test_decoder_presets_land_on_mm1s_learning_rates(name: str, lr: float) -> None:
    cfg = load_preset(name)
    n = decoder_params(cfg.model.decoder, cfg.model.moe, cfg.tokenizer.vocab_size).active
    assert peak_lr(n) == pytest.approx(lr, rel=0.02)


@pytest.mark.parametrize(
    ("name", "nominal"),
    [
        ("llm-9m", 9e6),
        ("llm-85m", 85e6),
        ("llm-302m", 302e6),
        ("llm-1.2b", 1.2e9),
        ("llm-2.9b", 2.9e9),
        ("llm-3b", 3e9),
        ("llm-7b", 7e9),
        ("llm-30b", 30e9),
    ],
)
def test_decoder_presets_are_close_to_their_nominal_size(name: str, nominal: float) -> None:
    cfg = load_preset(name)
    assert decoder_params(cfg.model.decoder, cfg.model.moe, cfg.tokenizer.vocab_size).total == pytest.approx(
        nominal, rel=0.03
    )


@pytest.mark.parametrize(
    ("name", "decoder", "encoder"),
    [
        ("mm1-ablation", "llm-1.2b", "vit-l14-336"),
        ("mm1-3b", "llm-3b", "vit-h14-378"),
        ("mm1-7b", "llm-7b", "vit-h14-378"),
        ("mm1-30b", "llm-30b", "vit-h14-378"),
        ("mm1-3b-moe", "llm-3b-moe", "vit-h14-378"),
        ("mm1-7b-moe", "llm-7b-moe", "vit-h14-378"),
    ],
)
def test_full_models_compose_their_bases_without_leaks(name: str, decoder: str, encoder: str) -> None:
    cfg, dec, enc = load_preset(name), load_preset(decoder), load_preset(encoder)
    assert (cfg.model.decoder, cfg.model.moe, cfg.tokenizer) == (dec.model.decoder, dec.model.moe, dec.tokenizer)
    assert cfg.model.encoder == enc.model.encoder
    assert (cfg.model.connector.kind, cfg.model.connector.num_tokens) == ("c_abstractor", 144)
    assert (cfg.train.global_batch_size, cfg.model.decoder.seq_length) == (512, 4096)


def test_moe_presets_follow_mm1() -> None:
    for name, experts, freq in (("llm-3b-moe", 64, 2), ("llm-7b-moe", 32, 4)):
        moe = load_preset(name).model.moe
        assert (moe.num_experts, moe.layer_freq, moe.top_k) == (experts, freq, 2)


# --- the loader ----------------------------------------------------------------------------------


def _write(directory: Path, **presets: str) -> Path:
    for name, text in presets.items():
        (directory / f"{name}.yaml").write_text(text)
    return directory


def test_a_list_of_bases_merges_in_order_and_the_preset_wins(tmp_path: Path) -> None:
    d = _write(
        tmp_path,
        a="train: {steps: 10, warmup_steps: 1}\nmodel: {decoder: {num_layers: 2}}\n",
        b="train: {steps: 20}\nmodel: {encoder: {num_layers: 3}}\n",
        c="base: [a, b]\nmodel: {decoder: {num_layers: 5}}\n",
    )
    data = preset_data("c", d)
    assert data == {
        "name": "c",
        "train": {"steps": 20, "warmup_steps": 1},
        "model": {"decoder": {"num_layers": 5}, "encoder": {"num_layers": 3}},
    }
    assert load_preset("c", d).train.steps == 20


def test_preset_files_are_the_bases_in_merge_order_then_the_preset_each_once(tmp_path: Path) -> None:
    d = _write(tmp_path, a="{}\n", b="base: a\n", c="base: [a, b]\n", x="base: y\n")
    assert [f.name for f in preset_files("c", d)] == ["a.yaml", "b.yaml", "c.yaml"]
    assert [f.name for f in preset_files("a", d)] == ["a.yaml"]
    with pytest.raises(ConfigError, match=r"unknown preset 'y' \(needed by 'x'\)"):
        preset_files("x", d)
    named = [f.name for f in preset_files("mm1-3b")]  # the packaged presets
    assert named[-1] == "mm1-3b.yaml" and {"mm1-ablation.yaml", "llm-3b.yaml", "vit-h14-378.yaml"} <= set(named)


def test_unknown_preset_lists_the_available_ones(tmp_path: Path) -> None:
    d = _write(tmp_path, one="{}\n", two="base: nope\n")
    with pytest.raises(ConfigError, match=r"unknown preset 'zzz'; available presets: one, two"):
        load_preset("zzz", d)
    with pytest.raises(ConfigError, match=r"unknown preset 'nope' \(needed by 'two'\)"):
        load_preset("two", d)


def test_a_cycle_is_an_error_that_shows_it(tmp_path: Path) -> None:
    d = _write(tmp_path, a="base: b\n", b="base: [c]\n", c="base: a\n")
    with pytest.raises(ConfigError, match=r"preset cycle: a -> b -> c -> a"):
        load_preset("a", d)


def test_bad_base_and_bad_values_are_config_errors(tmp_path: Path) -> None:
    d = _write(tmp_path, a="base: 3\n", b="train: {stepz: 3}\n")
    with pytest.raises(ConfigError, match="base must be a preset name or a list"):
        load_preset("a", d)
    with pytest.raises(ConfigError, match=r"(?s)preset b.*train.stepz"):
        load_preset("b", d)


def test_deep_merge_leaves_its_inputs_alone() -> None:
    base, top = {"a": {"x": 1, "y": 2}, "l": [1]}, {"a": {"y": 3}, "l": [2]}
    assert deep_merge(base, top) == {"a": {"x": 1, "y": 3}, "l": [2]}
    assert base == {"a": {"x": 1, "y": 2}, "l": [1]}
