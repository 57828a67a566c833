"""mm1.study: which stage runs an experiment needs, and which it shares with other experiments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mm1.config import ConfigError
from mm1.study import Study

TEXT_ONLY = {"data.mixture.caption": 0, "data.mixture.interleaved": 0, "data.mixture.text": 1}


def study(**experiments) -> Study:
    return Study(
        {
            "study": {
                "experiments": experiments,
                "stages": {"llm_pack": TEXT_ONLY, "llm": {"train.freeze": ["encoder", "connector"]}},
                "figures": {"fig": {"title": "t", "experiments": ["base", *experiments]}},
            }
        }
    )


def test_a_connector_cell_shares_everything_upstream_of_training():
    s = study(cabs={"model.connector.kind": "c_abstractor"})
    for stage in ("world", "tokenizer", "llm_pack", "llm", "encoder", "pack"):
        assert s.run_of(stage, "cabs") == "base", stage
    for stage in ("train", "eval", "sft", "sft_eval"):
        assert s.run_of(stage, "cabs") == "cabs", stage


def test_token_count_repacks_resolution_retrains_the_encoder():
    s = study(t4={"model.connector.num_tokens": 4}, r48={"model.encoder.image_size": 48})
    assert s.run_of("pack", "t4") == "t4" and s.run_of("encoder", "t4") == "base"
    assert s.run_of("encoder", "r48") == "r48" and s.run_of("pack", "r48") == "base"
    assert s.run_of("sft_pack", "r48") == "r48"  # image splitting crops at the encoder's resolution
    assert s.runs("train") == ["base", "t4", "r48"]


def test_the_llm_is_shared_across_learning_rates_but_not_decoder_sizes():
    s = study(lr={"train.lr": 3e-3}, wide={"model.decoder.hidden_size": 192, "model.decoder.ffn_hidden_size": 512})
    assert s.run_of("llm", "lr") == "base" and s.run_of("train", "lr") == "lr"
    assert json.loads(s.stage_json("train", "lr"))["train"]["lr"] == 3e-3
    assert json.loads(s.stage_json("llm", "lr"))["train"]["lr"] is None
    assert s.run_of("llm", "wide") == "wide" and s.run_of("llm_pack", "wide") == "base"


def test_an_override_equal_to_the_base_value_shares_the_base_runs():
    s = study(same={"model.connector.kind": "avg_pool", "train.seed": 1234})
    assert {s.run_of(stage, "same") for stage in ("pack", "train", "eval")} == {"base"}


def test_stage_overrides_apply_to_their_stage_only():
    s = study()
    llm_pack = json.loads(s.stage_json("llm_pack", "base"))
    assert llm_pack["data"]["mixture"] | {"synthetic_captions": 0, "max_images_per_sequence": 0} == {
        "caption": 0,
        "interleaved": 0,
        "text": 1,
        "synthetic_captions": 0,
        "max_images_per_sequence": 0,
    }
    assert json.loads(s.stage_json("llm", "base"))["train"]["freeze"] == ["encoder", "connector"]
    assert json.loads(s.stage_json("pack", "base"))["data"]["mixture"]["caption"] == 0.45
    assert json.loads(s.stage_json("train", "base"))["train"]["freeze"] == []
    assert json.loads(s.stage_json("train", "base"))["name"] == "base"


def test_training_reads_the_llm_and_encoder_unless_disabled():
    assert set(study().upstream("train")) == {"pack", "tokenizer", "llm", "encoder"}
    s = Study({"study": {"init_decoder": False, "init_encoder": False}})
    assert set(s.upstream("train")) == {"pack", "tokenizer"}
    assert Study({"data": {"source": "acquired", "sources": [_source()]}}).upstream("pack")[0] == "acquire"


def _source() -> dict:
    return {"name": "x", "url": "file:///x", "sha256": "0" * 64, "format": "jsonl", "role": "text", "licence": "CC0"}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"study": {"experiments": {"a": {"model.connector.kind": "pool"}}}}, ["'a'", "model.connector.kind"]),
        ({"study": {"experiments": {"a": {"modle.x": 1}}}}, ["'modle.x'", "does not start with a config section"]),
        ({"study": {"experiments": {"a b": {}}}}, ["'a b'", "letters, digits"]),
        ({"study": {"experiments": {"base": {}}}}, ["'base'"]),
        ({"study": {"figures": {"f": {"title": "t", "experiments": ["nope"]}}}}, ["'f'", "nope"]),
        ({"study": {"stages": {"lm": {}}}}, ["unknown stage 'lm'"]),
        ({"study": {"stages": {"llm": {"train.steps": 0}}}}, ["stage llm", "train.steps"]),
    ],
)
def test_bad_study_config_names_the_field(data, words):
    with pytest.raises(ConfigError) as err:
        Study(data)
    for word in words:
        assert word in str(err.value)


def test_unknown_experiment_and_figure_are_errors():
    s = study(a={"train.lr": 1e-3})
    with pytest.raises(ConfigError, match="unknown experiment 'b'; declared: base, a"):
        s.run_of("train", "b")
    with pytest.raises(ConfigError, match="unknown figure 'fig9'"):
        s.figure_cells("fig9")
    assert s.figure_cells("fig") == ["base", "a"]


def test_a_preset_override_swaps_the_encoder_and_an_explicit_key_wins():
    s = study(vitl={"preset": "vit-l14-336", "model.encoder.image_size": 224})
    enc = s.config("vitl").model.encoder
    assert (enc.hidden_size, enc.num_layers, enc.patch_size, enc.image_size) == (1024, 24, 14, 224)
    assert s.run_of("encoder", "vitl") == "vitl" and s.run_of("llm", "vitl") == "base"
    with pytest.raises(ConfigError, match="experiment 'x'.*unknown preset 'vit-q'"):
        study(x={"preset": "vit-q"})


def seeded(seeds: int = 3, common: dict | None = None, **experiments) -> Study:
    return Study(
        {
            "study": {
                "experiments": experiments,
                "seeds": seeds,
                "common": common or {},
                "figures": {"fig": {"title": "t", "experiments": ["base", *experiments]}},
            }
        }
    )


def test_each_figure_cell_runs_once_per_seed_sharing_the_llm_and_encoder():
    s = seeded(cabs={"model.connector.kind": "c_abstractor"})
    assert s.seed_runs("cabs") == ["cabs", "cabs-s1", "cabs-s2"]
    seeds = [s.stage_config("train", r).train.seed for r in s.seed_runs("cabs")]
    assert seeds == [1234, 1235, 1236]
    assert s.runs("train", s.seed_runs("cabs")) == ["cabs", "cabs-s1", "cabs-s2"]
    assert s.runs("pack", s.seed_runs("cabs")) == ["base", "base-s1", "base-s2"]  # the seed orders the data
    for stage in ("world", "tokenizer", "llm", "encoder"):
        assert s.runs(stage, s.seed_runs("cabs")) == ["base"], stage


def test_a_seed_run_follows_an_experiment_that_sets_its_own_seed():
    s = seeded(other={"train.seed": 7})
    assert [s.stage_config("train", r).train.seed for r in s.seed_runs("other")] == [7, 8, 9]


def test_one_seed_adds_no_runs_and_undeclared_experiments_get_no_seeds():
    assert seeded(seeds=1, x={"train.lr": 1e-3}).seed_runs("x") == ["x"]
    s = Study({"study": {"seeds": 3, "experiments": {"lonely": {"train.lr": 1e-3}}}})
    assert s.seed_runs("lonely") == ["lonely"] and "lonely-s1" not in s.names


def test_a_figure_with_more_seeds_adds_runs_only_for_its_cells():
    s = Study(
        {
            "study": {
                "seeds": 3,
                "experiments": {"abl": {}, "other": {"train.lr": 1e-3}},
                "figures": {
                    "fig": {"title": "t", "experiments": ["abl", "other"]},
                    "pilot": {"title": "p", "experiments": ["abl", "base"], "seeds": 5},
                },
                "pilot": {"figure": "pilot", "metrics": ["8-shot ll"], "effects": [1.0]},
            }
        }
    )
    assert s.seed_runs("abl") == ["abl", "abl-s1", "abl-s2", "abl-s3", "abl-s4"]
    assert s.seed_runs("abl", 3) == ["abl", "abl-s1", "abl-s2"]  # what fig reads of it
    assert s.seed_runs("other") == ["other", "other-s1", "other-s2"] and "other-s3" not in s.names
    assert [s.stage_config("train", r).train.seed for r in s.seed_runs("abl")] == [1234, 1235, 1236, 1237, 1238]


@pytest.mark.parametrize(
    ("pilot", "figures", "words"),
    [
        ({"figure": "nope", "metrics": ["m"], "effects": [1]}, {}, ["study.pilot.figure", "nope"]),
        (
            {"figure": "p", "metrics": ["m"], "effects": [1]},
            {"p": {"title": "t", "experiments": ["base"]}},
            ["2 cells"],
        ),
        ({"figure": "p", "metrics": ["m"], "effects": [0]}, {}, ["effects", "> 0"]),
        ({"figure": "p", "metrics": [], "effects": [1]}, {}, ["metrics"]),
    ],
)
def test_a_bad_pilot_names_the_field(pilot, figures, words):
    with pytest.raises(ConfigError) as err:
        Study({"study": {"figures": figures, "pilot": pilot}})
    for word in words:
        assert word in str(err.value)


def test_common_overrides_apply_to_every_experiment_but_not_base():
    s = seeded(common={"train.steps": 50, "train.warmup_steps": 5}, abl={}, fast={"train.steps": 20})
    assert s.config("base").train.steps == 500
    assert s.config("abl").train.steps == 50 and s.config("abl-s2").train.steps == 50
    assert s.config("fast").train.steps == 20  # the experiment's own override wins
    assert s.run_of("train", "abl") == "abl" and s.run_of("llm", "abl") == "base"


@pytest.mark.parametrize(
    ("study_data", "words"),
    [
        ({"seeds": 2, "experiments": {"x-s1": {}}}, ["x-s1", "seed"]),
        ({"seeds": 0}, ["seeds"]),
        ({"common": {"trian.steps": 3}}, ["study.common", "trian.steps"]),
        (
            {"figures": {"f": {"title": "t", "experiments": ["base"], "paper": {"nope": {"0-shot": 1.0}}}}},
            ["nope", "paper"],
        ),
        (
            {
                "figures": {"f": {"title": "t", "experiments": ["base"]}},
                "lessons": {
                    "1": {
                        "statement": "s",
                        "checks": [{"figure": "g", "metric": "m", "a": ["base"], "b": ["base"], "expect": "a>b"}],
                    }
                },
            },
            ["lesson '1'", "unknown figure 'g'"],
        ),
        (
            {
                "figures": {"f": {"title": "t", "experiments": ["base"]}},
                "lessons": {
                    "1": {
                        "statement": "s",
                        "checks": [{"figure": "f", "metric": "m", "a": ["x"], "b": ["base"], "expect": "a>b"}],
                    }
                },
            },
            ["['x']", "not in figure 'f'"],
        ),
        (
            {
                "figures": {"f": {"title": "t", "experiments": ["base"]}},
                "lessons": {
                    "1": {
                        "statement": "s",
                        "checks": [{"figure": "f", "metric": "m", "a": ["base"], "b": ["base"], "expect": "a~b"}],
                    }
                },
            },
            ["tolerance"],
        ),
    ],
)
def test_bad_seeds_common_paper_and_lessons_name_the_problem(study_data, words):
    with pytest.raises(ConfigError) as err:
        Study({"study": study_data})
    for word in words:
        assert word in str(err.value), (word, str(err.value))


# --- SFT-only overrides (Fig 7: one pre-trained model, fine-tuned at a higher resolution) ----------

PRETRAINING = ("world", "tokenizer", "llm_pack", "llm", "encoder", "pack", "train", "eval")


def test_an_sft_only_override_changes_the_sft_stages_and_nothing_upstream():
    s = study(hi={"sft_only": {"model.encoder.image_size": 48, "train.lr": 1e-4}}, r48={"model.encoder.image_size": 48})
    for stage in PRETRAINING:
        assert s.run_of(stage, "hi") == "base", stage
        assert s.stage_json(stage, "hi").replace('"hi"', '"base"') == s.stage_json(stage, "base"), stage
    for stage in ("sft", "sft_eval"):
        assert s.run_of(stage, "hi") == "hi", stage
    assert s.run_of("sft_pack", "hi") == s.run_of("sft_pack", "r48") == "hi"  # the same 48 px SFT data
    sft = s.stage_config("sft", "hi")
    assert (sft.model.encoder.image_size, sft.train.lr) == (48, 1e-4)
    assert s.stage_config("train", "hi").model.encoder.image_size == 32
    assert s.config("hi").model.encoder.image_size == 32  # the whole run is the pre-training's
    assert s.run_of("encoder", "r48") == "r48" and s.run_of("train", "r48") == "r48"  # a plain key retrains


def test_sft_only_overrides_win_over_the_sft_stage_settings_and_follow_the_seeds():
    s = Study(
        {
            "study": {
                "seeds": 2,
                "stages": {"sft": {"train.steps": 30, "train.warmup_steps": 3}},
                "experiments": {
                    "long": {"sft_only": {"train.steps": 60}},
                    "short": {"train.steps": 20, "train.warmup_steps": 2},
                },
                "figures": {"fig": {"title": "t", "experiments": ["base", "long", "short"]}},
            }
        }
    )
    assert s.stage_config("sft", "long").train.steps == 60 and s.stage_config("train", "long").train.steps == 500
    assert s.stage_config("sft", "short").train.steps == 30  # a plain override does not reach SFT's length
    assert s.stage_config("sft", "long-s1").train.steps == 60
    assert s.runs("train", s.seed_runs("long")) == ["base", "base-s1"]  # seed runs share base's pre-training
    assert s.runs("sft", s.seed_runs("long")) == ["long", "long-s1"]


def paper_study() -> Study:
    import yaml

    from mm1.config.presets import deep_merge

    config = Path(__file__).parents[2] / "config"
    base = yaml.safe_load((config / "default.yaml").read_text())
    return Study(deep_merge(base, yaml.safe_load((config / "study.yaml").read_text())), "config/study.yaml")


def test_fig7_fine_tunes_one_pretrained_model_per_seed_at_each_resolution():
    s = paper_study()
    cells = s.figure_cells("fig7")
    resolution = [c for c in cells if not c.startswith("ckpt-")]
    assert len(resolution) >= 4 and "abl" in resolution
    seeds = s.base.study.seeds
    for k in range(seeds):
        runs = [s.seed_runs(c)[k] for c in resolution]
        assert len(s.runs("train", runs)) == 1, runs  # one pre-training per seed ...
        assert len(s.runs("sft", runs)) == len(runs)  # ... fine-tuned once per cell
    assert len(s.runs("encoder", resolution)) == 1
    effective = sorted(
        s.stage_config("sft", c).model.encoder.image_size * s.stage_config("sft", c).sft.image_grid for c in resolution
    )
    assert effective[0] == 32 and effective[-1] > 32 and len(set(effective)) >= 3
    assert {s.stage_config("train", c).model.encoder.image_size for c in resolution} == {32}
    assert any(s.stage_config("sft", c).sft.image_grid > 1 for c in resolution)  # image splitting
    ckpt = [c for c in cells if c.startswith("ckpt-")]
    assert len(s.runs("train", ["abl", *ckpt])) == 1 + len(ckpt)  # the pre-training-step panel


@pytest.mark.parametrize(
    ("sft_only", "words"),
    [
        ({"model.encoder.image_size": 50}, ["stage sft_pack", "image_size=50", "use 48 or 52", "sft_only", "'hi'"]),
        ({"model.encoder.imagesize": 48}, ["model.encoder.imagesize", "image_size", "sft_only"]),
        ({"data.mixture.caption": 1}, ["'hi'", "'data.mixture.caption'", "reaches no SFT stage"]),
        ({"modle.x": 1}, ["'hi', sft_only", "'modle.x'", "config section"]),
        ({"preset": "vit-l14-336"}, ["sft_only", "'preset'"]),
        (48, ["sft_only takes dotted overrides"]),
    ],
)
def test_a_bad_sft_only_override_names_the_field(sft_only, words):
    with pytest.raises(ConfigError) as err:
        Study({"study": {"experiments": {"hi": {"sft_only": sft_only}}}})
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_the_600_step_lessons_config_trains_every_lesson_cell_at_600_steps_with_the_planned_seeds():
    """config/lessons-600.yaml over the study: the runs `snakemake lessons` needs, as the docs count them."""
    from mm1.pipeline import FIGURES_DIR, Pipeline, assemble

    root = Path(__file__).resolve().parents[2]
    s = Study(assemble(yaml.safe_load((root / "config/lessons-600.yaml").read_text()), root).config)
    runs, _ = Pipeline(s).closure([f"{FIGURES_DIR}/lessons.md"])
    trained = [run for stage, run in runs if stage == "train"]
    assert len(trained) == len(set(trained)) == 76  # 56 (lessons 1, 3-6) + 20 more for fig4's 12 cells x 2
    assert {s.stage_config("train", run).train.steps for run in trained} == {600}
    encoders = sorted(run for stage, run in runs if stage == "encoder")
    assert encoders == ["base", "enc-wide", "res-48"]  # abl shares the base encoder
    # paired figures 5 seeds, Welch 4, factorial 2; table1 cut to the arms its checks read
    for exp, n in {"abl": 5, "syn-0": 5, "enc-wide": 5, "mix-c0": 4, "mix-111": 4, "conn-cabs-t4-r48": 2}.items():
        assert {run for run in trained if run in s.seed_runs(exp)} == set(s.seed_runs(exp, n)), exp
    assert not set(s.seed_runs("enc-aim")) & set(trained)
