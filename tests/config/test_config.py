"""Config: YAML + dotted overrides, errors that name the field, frozen documented models, schema drift."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import jsonschema
import pydantic
import pytest
import yaml

from mm1.config import ConfigError, ParallelConfig, RunConfig, dump, from_dict, load
from mm1.config.load import apply_overrides, parse_override
from mm1.config.schema import SCHEMA_PATH, json_schema, render

REPO = Path(__file__).resolve().parents[2]


def _error(overrides: list[str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, overrides)
    return str(info.value)


# --- loading and round trips -------------------------------------------------------------------


def test_defaults_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = load()
    path = tmp_path / "run.yaml"
    path.write_text(dump(cfg))
    assert load(path) == cfg


def test_non_default_values_survive_a_round_trip(tmp_path: Path) -> None:
    cfg = load(
        None,
        ["train.steps=77", "train.warmup_steps=3", "model.decoder.position_embedding=learned_absolute", "name=other"],
    )
    path = tmp_path / "run.yaml"
    path.write_text(dump(cfg))
    again = load(path)
    assert again == cfg
    assert again.train.steps == 77
    assert again.model.decoder.position_embedding == "learned_absolute"


def test_dump_lists_every_field_including_defaults() -> None:
    data = yaml.safe_load(dump(load()))
    assert set(data) == set(RunConfig.model_fields)
    assert set(data["train"]) == set(RunConfig.model_fields["train"].annotation.model_fields)


def test_yaml_file_sets_values_and_keeps_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("name: my-run\ntrain:\n  steps: 42\n  warmup_steps: 2\n  lr: 0.01\n")
    cfg = load(path)
    assert (cfg.name, cfg.train.steps, cfg.train.lr) == ("my-run", 42, 0.01)
    assert cfg.model == RunConfig().model


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  steps: 42\n  warmup_steps: 2\n")
    assert load(path, ["train.steps=43"]).train.steps == 43


def test_committed_default_yaml_equals_the_models_defaults() -> None:
    assert load(REPO / "config" / "default.yaml") == RunConfig()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("train: [1, 2\n", "not valid YAML"), ("- a\n- b\n", "mapping")],
)
def test_bad_yaml_files_are_config_errors(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.yaml")


def test_yaml_timestamp_value_is_a_config_error_not_a_type_error(tmp_path: Path) -> None:
    # YAML reads an unquoted 2024-01-01 as a date; the loader must report it like any bad value.
    path = tmp_path / "cfg.yaml"
    path.write_text("name: 2024-01-01\n")
    with pytest.raises(ConfigError, match="name"):
        load(path)


# --- errors name the field and what is allowed ------------------------------------------------


def test_unknown_key_names_the_dotted_field_and_allowed_keys() -> None:
    msg = _error(["train.stepz=3"])
    assert "train.stepz" in msg
    assert "allowed keys" in msg
    for key in RunConfig.model_fields["train"].annotation.model_fields:
        assert key in msg


def test_unknown_top_level_key_lists_the_sections() -> None:
    msg = _error(["trian.steps=3"])
    assert "trian" in msg
    for key in RunConfig.model_fields:
        assert key in msg


def test_bad_literal_names_the_allowed_values() -> None:
    msg = _error(["train.lr_decay=cos"])
    assert "train.lr_decay" in msg
    for value in typing.get_args(RunConfig.model_fields["train"].annotation.model_fields["lr_decay"].annotation):
        assert repr(value) in msg
    assert "'cos'" in msg


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.lr=-0.1", "train.lr"),
        ("train.lr=abc", "train.lr"),
        ("train.steps=0", "train.steps"),
        ("model.decoder.hidden_size=2", "model.decoder.hidden_size"),
        ("world.image_size=4", "world.image_size"),
        ("name=has space", "name"),
    ],
)
def test_bad_value_names_the_field(override: str, field: str) -> None:
    msg = _error([override])
    assert f"{field}:" in msg
    assert override.split("=", 1)[1] in msg  # the offending value is echoed


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        # tp=3 divides world_size=3 but not the 4 attention heads
        (
            ["parallel.world_size=3", "parallel.tp=3", "model.decoder.num_attention_heads=4"],
            ["parallel.tp=3", "model.decoder.num_attention_heads=4"],
        ),
        (
            [
                "parallel.world_size=3",
                "parallel.tp=3",
                "model.decoder.num_attention_heads=3",
                "model.decoder.hidden_size=48",
            ],
            ["parallel.tp=3", "model.encoder.num_attention_heads"],
        ),
        (["parallel.world_size=2", "parallel.pp=2", "model.decoder.num_layers=3"], ["parallel.pp=2", "num_layers=3"]),
        (["parallel.world_size=2", "parallel.ep=2"], ["parallel.ep=2", "model.moe.num_experts"]),
        (
            ["parallel.world_size=3", "parallel.ep=3", "model.moe.num_experts=4", "model.moe.top_k=1"],
            ["parallel.ep=3", "num_experts=4"],
        ),
        (["parallel.world_size=3", "parallel.tp=2"], ["world_size=3", "tp*pp=2"]),
        (
            ["parallel.world_size=3", "train.micro_batch_size=4", "train.global_batch_size=16"],
            ["train.global_batch_size=16", "micro_batch_size*dp=12"],
        ),
        (["train.warmup_steps=10", "train.steps=10"], ["warmup_steps=10", "steps=10"]),
        (
            ["train.global_batch_size=12", "train.micro_batch_size=8"],
            ["global_batch_size=12", "micro_batch_size=8"],
        ),
        (["model.encoder.image_size=32", "model.encoder.patch_size=5"], ["image_size=32", "patch_size=5", "30", "35"]),
        (["model.connector.num_tokens=10"], ["num_tokens=10", "9", "16"]),
        (
            ["model.encoder.image_size=32", "model.encoder.patch_size=4", "model.connector.num_tokens=81"],
            ["connector.num_tokens=81", "8x8", "at most 64"],
        ),
        (["model.connector.kind=attn_pool", "model.connector.num_heads=5"], ["num_heads=5", "hidden_size=64"]),
        (["model.decoder.num_query_groups=3"], ["num_query_groups=3", "num_attention_heads=4"]),
        (
            ["model.connector.num_tokens=16", "model.decoder.seq_length=16"],
            ["connector.num_tokens=16", "seq_length=16"],
        ),
        (["model.moe.num_experts=2", "model.moe.top_k=3"], ["top_k=3", "num_experts=2"]),
    ],
)
def test_checks_across_fields_name_the_fields(overrides: list[str], fragments: list[str]) -> None:
    msg = _error(overrides)
    for fragment in fragments:
        assert fragment in msg


def test_valid_parallel_layouts_are_accepted() -> None:
    batch = ["train.micro_batch_size=4", "train.global_batch_size=16"]
    cfg = load(None, ["parallel.world_size=4", "parallel.tp=2", *batch])
    assert cfg.parallel.dp == 2
    moe = load(None, ["parallel.world_size=2", "parallel.ep=2", "model.moe.num_experts=4", *batch])
    assert moe.model.moe.enabled


def test_expert_parallel_must_fit_in_the_data_parallel_ranks() -> None:
    # megatron builds expert groups of tp * ep * pp ranks (expert-TP defaults to tp), so ep must divide
    # world_size / (tp * pp). tp=2, ep=4 on 4 ranks passes a check on world_size / pp only, then
    # megatron's initialize_model_parallel raises at startup.
    with pytest.raises(pydantic.ValidationError, match="ep"):
        ParallelConfig(world_size=4, tp=2, pp=1, ep=4)


def test_from_dict_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"invalid config \(my-source\)"):
        from_dict({"train": {"steps": -1}}, "my-source")


# --- overrides ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("train.steps=10", ["train", "steps"], 10),
        ("train.lr=1.0e-3", ["train", "lr"], 1e-3),
        ("a.b=true", ["a", "b"], True),
        ("a.b=[1, 2]", ["a", "b"], [1, 2]),
        ("a.b=x=y", ["a", "b"], "x=y"),
        ("a.b='010'", ["a", "b"], "010"),
        ("a.b=", ["a", "b"], ""),
        (" name = run-1", ["name"], "run-1"),
    ],
)
def test_parse_override_reads_yaml_scalars_and_lists(text: str, path: list[str], value: object) -> None:
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize("text", ["a.b", "=3", "a.b=[1,"])
def test_malformed_overrides_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="override"):
        parse_override(text)


def test_exponent_without_a_dot_still_loads_as_a_number() -> None:
    # YAML 1.1 reads 1e-3 as a string; the float field must still accept it.
    assert load(None, ["train.lr=1e-3"]).train.lr == 1e-3


def test_override_without_equals_is_rejected_by_load() -> None:
    assert "section.field=value" in _error(["train.steps"])


def test_apply_overrides_does_not_modify_its_input() -> None:
    data = {"train": {"steps": 5}}
    out = apply_overrides(data, ["train.steps=6", "model.decoder.num_layers=3"])
    assert data == {"train": {"steps": 5}}
    assert out == {"train": {"steps": 6}, "model": {"decoder": {"num_layers": 3}}}


def test_override_into_a_scalar_from_the_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  steps: 10\n")
    msg = _error(["train.steps.x=1"], path)
    assert "'steps' is a value, not a section" in msg


def test_override_into_a_default_scalar_names_the_field() -> None:
    msg = _error(["train.steps.x=1"])
    assert "train.steps:" in msg


def test_override_replacing_a_section_by_a_scalar_names_the_section() -> None:
    assert "world:" in _error(["world=3"])


# --- models are frozen and documented ---------------------------------------------------------


def test_config_is_frozen() -> None:
    cfg = load()
    with pytest.raises(pydantic.ValidationError):
        cfg.train.steps = 5  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        cfg.name = "x"  # type: ignore[misc]
    assert cfg.train.steps == RunConfig().train.steps


def test_unknown_keys_are_rejected_by_every_section() -> None:
    for model in _models(RunConfig):
        with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
            model.model_validate({"surely_not_a_field": 1})


def _models(root: type[pydantic.BaseModel]) -> list[type[pydantic.BaseModel]]:
    found, todo = [], [root]
    while todo:
        model = todo.pop()
        if model in found:
            continue
        found.append(model)
        for field in model.model_fields.values():
            if isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel):
                todo.append(field.annotation)
    return found


def test_every_field_of_every_section_is_documented() -> None:
    models = _models(RunConfig)
    assert len(models) >= 10  # the walk reaches the nested sections
    undocumented = [
        f"{model.__name__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if not (field.description and field.description.strip())
    ]
    assert undocumented == []
    assert all(model.__doc__ and model.__doc__.strip() for model in models)


# --- the generated JSON schema ----------------------------------------------------------------


def test_committed_schema_matches_the_models() -> None:
    committed = (REPO / SCHEMA_PATH).read_text()
    assert committed == render(), f"{SCHEMA_PATH} is stale; run `mm1 config schema --write {SCHEMA_PATH}`"


def test_schema_accepts_the_default_config() -> None:
    data = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    jsonschema.Draft202012Validator(json_schema()).validate(data)


def test_schema_accepts_the_dump_of_any_valid_config() -> None:
    cfg = load(
        None,
        [
            "parallel.world_size=2",
            "parallel.ep=2",
            "model.moe.num_experts=4",
            "train.micro_batch_size=4",
            "train.global_batch_size=16",
        ],
    )
    jsonschema.Draft202012Validator(json_schema()).validate(yaml.safe_load(dump(cfg)))


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(unknown=1),
        lambda d: d["train"].update(unknown=1),
        lambda d: d["model"]["decoder"].update(unknown=1),
        lambda d: d["train"].update(lr_decay="cos"),
        lambda d: d["train"].update(lr=-1.0),
    ],
)
def test_schema_rejects_unknown_keys_and_bad_values(change) -> None:
    data = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    change(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(json_schema()).validate(data)


def test_render_is_sorted_json_ending_in_newline() -> None:
    text = render()
    assert text.endswith("\n")
    assert json.loads(text) == json_schema()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


# --- strict numbers: no bool, text or non-finite value where a number is meant ------------------------


@pytest.mark.parametrize(
    ("override", "field", "fragment"),
    [
        ("train.steps=true", "train.steps", "valid integer"),
        ("train.lr=true", "train.lr", "valid number"),
        ("train.resume=1", "train.resume", "valid boolean"),
        ("train.steps='10'", "train.steps", "valid integer"),
        ("train.steps=10.0", "train.steps", "valid integer"),
        ("train.lr=.inf", "train.lr", "finite number"),
        ("train.weight_decay=.inf", "train.weight_decay", "finite number"),
        ("train.clip_grad=.nan", "train.clip_grad", "finite number"),
        ("model.decoder.rotary_base=-.inf", "model.decoder.rotary_base", "finite number"),
        ("eval.shots=[0, true]", "eval.shots.1", "valid integer"),
        ("train.seed=18446744073709551616", "train.seed", "64-bit integer"),  # 2**64: torch overflowed here
        ("train.seed=4294967296", "train.seed", "less than or equal to 4294967295"),
        ("world.seed=-1", "world.seed", "greater than or equal to 0"),
        ("world.n_captions=9223372036854775808", "world.n_captions", "64-bit integer"),
    ],
)
def test_numbers_are_strict_finite_and_in_range(override: str, field: str, fragment: str) -> None:
    msg = _error([override])
    assert f"{field}:" in msg and fragment in msg, msg


def test_an_int_fills_a_float_field_and_a_list_a_tuple_field() -> None:
    cfg = load(None, ["train.lr=1", "eval.shots=[0, 4]", "train.freeze=[encoder]"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.eval.shots == (0, 4) and cfg.train.freeze == ["encoder"]


def test_yaml_1_1_exponent_text_still_fills_a_float_field() -> None:
    # PyYAML (and so Snakemake's --configfile) reads 3e-4 as text; it is still the number 3e-4.
    assert from_dict({"train": {"lr": "3e-4"}}).train.lr == 3e-4
    with pytest.raises(ConfigError, match="train.steps"):
        from_dict({"train": {"steps": "1e3"}})


def test_every_seed_limit_is_accepted_by_numpy_torch_and_megatrons_offsets() -> None:
    import numpy as np
    import torch

    from mm1.config.base import SEED_MAX

    for path in (("train", "seed"), ("world", "seed"), ("sft", "seed"), ("eval", "seed")):
        field = RunConfig.model_fields[path[0]].annotation.model_fields[path[1]]
        limit = next(m.le for m in field.metadata if getattr(m, "le", None) is not None)
        assert limit == SEED_MAX
    np.random.seed(SEED_MAX)
    np.random.default_rng([SEED_MAX, 5, 2**31])
    torch.manual_seed(SEED_MAX + 2718 + 1024 + 100 * 64 + 64)  # megatron's tp/ep seed offsets
    with pytest.raises(ConfigError, match="train.seed"):
        load(None, [f"train.seed={SEED_MAX + 1}"])


# --- a study's experiments are validated, every one, naming the experiment and the field -------------


def _study(experiments: dict, **study) -> dict:
    return {"study": {"experiments": experiments, **study}}


def test_check_study_lists_every_bad_experiment_with_its_field() -> None:
    from mm1.study import check_study

    data = _study(
        {
            "good": {"train.steps": 50},
            "bool_steps": {"train.steps": True},
            "inf_lr": {"train.lr": float("inf")},
            "typo": {"train.stepz": 3},
        }
    )
    with pytest.raises(ConfigError) as info:
        check_study(data, "study.yaml")
    msg = str(info.value)
    for exp, field in (("bool_steps", "train.steps"), ("inf_lr", "train.lr"), ("typo", "train.stepz")):
        assert f"experiment {exp!r}" in msg and f"{field}:" in msg, msg
    assert "'good'" not in msg
    assert check_study(_study({"good": {"train.steps": 50}}), "study.yaml").config("good").train.steps == 50


def test_a_seed_run_past_the_seed_range_is_named() -> None:
    from mm1.config.base import SEED_MAX
    from mm1.study import check_study

    data = _study({"cell": {"train.seed": SEED_MAX}}, seeds=2, figures={"f": {"title": "t", "experiments": ["cell"]}})
    with pytest.raises(ConfigError, match=r"experiment 'cell-s1'(.|\n)*train.seed"):
        check_study(data, "study.yaml")


@pytest.mark.parametrize(
    "overrides",
    [{"train": 5, "train.steps": 3}, {"train.steps": 3, "train": 5}, {"train.steps.x": 1, "train.steps": 3}],
)
def test_conflicting_override_keys_name_the_experiment(overrides: dict) -> None:
    from mm1.study import check_study

    with pytest.raises(ConfigError, match="experiment 'clash'"):
        check_study(_study({"clash": overrides}), "study.yaml")


def test_a_stage_override_that_breaks_the_config_is_named() -> None:
    from mm1.study import check_study

    with pytest.raises(ConfigError, match=r"stage sft(.|\n)*train.lr"):
        check_study(_study({}, stages={"sft": {"train.lr": float("nan")}}), "study.yaml")


def test_study_seeds_are_bounded() -> None:
    assert "study.seeds" in str(pytest.raises(ConfigError, from_dict, {"study": {"seeds": 10**9}}).value)
