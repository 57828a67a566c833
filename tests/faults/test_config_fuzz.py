"""Item 7: config fuzz. Any config mistake -- a wrong type, an out-of-range value, an unknown key, a
parallel layout that cannot work -- is a ConfigError naming the field, before torch or megatron
sees it; and every layout the config accepts builds megatron's TransformerConfigs, its rank groups
and mm1's size and plan estimates without an error.

Hypothesis runs derandomized (tests/faults/conftest.py), with modest example counts.
"""

from __future__ import annotations

import copy
import datetime
import math
import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from mm1.config import ConfigError, RunConfig, from_dict
from mm1.config.base import _kinds
from mm1.config.load import parse_override, read_yaml
from mm1.config.readers import parse_json
from mm1.study import Study, check_study

pytestmark = pytest.mark.faults(item=7)


def _section(annotation: object) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def leaves(model: type[BaseModel] = RunConfig, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every non-section field of the config, as a path (("train", "steps"), ...)."""
    out = []
    for name, field in model.model_fields.items():
        sub = _section(field.annotation)
        out += leaves(sub, (*prefix, name)) if sub else [(*prefix, name)]
    return out


def sections(model: type[BaseModel] = RunConfig, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every section path, the root included."""
    out = [prefix]
    for name, field in model.model_fields.items():
        sub = _section(field.annotation)
        if sub:
            out += sections(sub, (*prefix, name))
    return out


LEAVES = leaves()
SECTIONS = sections()


def nested(path: tuple[str, ...], value: object) -> dict:
    for key in reversed(path):
        value = {key: value}
    return value  # type: ignore[return-value]


DEFAULTS = RunConfig().model_dump(mode="json")  # every field given, as a config file could


def mutated(path: tuple[str, ...], value: object) -> dict:
    """The full default config with one leaf replaced."""
    data = copy.deepcopy(DEFAULTS)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.5, -0.0, 1e-300]),
    st.text(max_size=6),
    st.sampled_from(["1e-3", "2024-01-01", "", "true", "none", "../x", "a;b"]),
    st.just(datetime.date(2024, 1, 1)),
    st.lists(st.integers(-3, 3) | st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-3, 3), max_size=2),
)


def named(text: str) -> set[str]:
    """What a ConfigError names: each line's location (``train.steps``; ``train`` for a check across
    that section's fields) and every dotted field its message mentions."""
    out = set()
    for line in text.splitlines()[1:]:
        where, _, message = line.strip().partition(": ")
        out |= {where} | set(re.findall(r"\b[a-z_]+(?:\.[a-z_0-9]+)+", message))
    return out


def accepted_or_names(data: dict, *fields: str) -> RunConfig | None:
    """The config, or None after checking that the ConfigError names one of ``fields`` (a field
    named inside its section, e.g. "parallel" + "world_size=", counts)."""
    try:
        return from_dict(data, "fuzz.yaml")
    except ConfigError as exc:
        text = str(exc)
        assert text.startswith("invalid config (fuzz.yaml)")
        names = named(text)
        hit = [
            f
            for f in fields
            if any(
                n == f or n.startswith(f + ".") or f.startswith(n + ".") and f.rsplit(".", 1)[1] in text for n in names
            )
        ]
        assert hit, f"none of {fields} named in:\n{text}\n(names: {sorted(names)})"
        return None


def test_the_walk_finds_every_section_and_leaf():
    assert ("train", "steps") in LEAVES and ("model", "decoder", "num_query_groups") in LEAVES
    assert ("model", "encoder", "clip") in SECTIONS and len(LEAVES) > 120


@settings(max_examples=400)
@given(path=st.sampled_from(LEAVES), value=WRONG)
def test_one_field_mutation_is_accepted_or_names_the_field(path: tuple[str, ...], value: object):
    cfg = accepted_or_names(mutated(path, value), ".".join(path))
    if cfg is not None:
        node = cfg
        for key in path:
            node = getattr(node, key)
        assert node is not None or value is None


@settings(max_examples=150)
@given(where=st.sampled_from(SECTIONS), key=st.text(min_size=1, max_size=8), value=WRONG)
def test_unknown_key_at_any_depth_is_named_with_the_allowed_keys(where: tuple[str, ...], key: str, value: object):
    model: type[BaseModel] = RunConfig
    for part in where:
        model = _section(model.model_fields[part].annotation)  # type: ignore[assignment]
    if key in model.model_fields:
        return
    with pytest.raises(ConfigError) as info:
        from_dict(nested((*where, key), value))
    dotted = ".".join((*where, key))
    assert f"{dotted}: Extra inputs are not permitted" in str(info.value)
    assert "allowed keys: " + ", ".join(model.model_fields) in str(info.value)


YAML_TEXT = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5) | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["train", "model", "steps", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=100)
@given(doc=YAML_TEXT | st.text(max_size=40))
def test_yaml_document_fuzz_is_a_config_error_or_a_config(doc: object, tmp_path_factory):
    path = tmp_path_factory.mktemp("yaml") / "fuzz.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    try:
        data = read_yaml(path)
        from_dict(data, "fuzz.yaml")
    except ConfigError as exc:
        assert "fuzz.yaml" in str(exc)


def _field(path: tuple[str, ...]):
    model: type[BaseModel] = RunConfig
    for part in path[:-1]:
        model = _section(model.model_fields[part].annotation)  # type: ignore[assignment]
    return model.model_fields[path[-1]]


NUMERIC = [
    p for p in LEAVES if _kinds(_field(p).annotation) & {int, float} and bool not in _kinds(_field(p).annotation)
]
NOT_A_NUMBER = st.sampled_from([True, False, math.inf, -math.inf, math.nan, 2**63, -(2**63) - 1, 2**64, "1", "nan"])


def test_the_numeric_walk_finds_the_fields_of_the_issue():
    for path in (("train", "seed"), ("train", "lr"), ("train", "weight_decay"), ("train", "steps")):
        assert path in NUMERIC
    assert ("train", "resume") not in NUMERIC and len(NUMERIC) > 60


@settings(max_examples=200)
@given(path=st.sampled_from(NUMERIC), value=NOT_A_NUMBER)
def test_a_bool_text_non_finite_or_out_of_range_number_is_refused_naming_the_field(path, value):
    assert accepted_or_names(mutated(path, value), ".".join(path)) is None, (path, value)


@settings(max_examples=100)
@given(path=st.sampled_from(NUMERIC), value=st.sampled_from(["true", ".inf", "-.inf", ".nan", "010", "'1'", "2**64"]))
def test_set_with_a_bool_non_finite_or_octal_value_is_refused_naming_the_field(path, value):
    dotted = ".".join(path)
    try:
        keys, parsed = parse_override(f"{dotted}={value}")
    except ConfigError as exc:  # 010: refused as it is read
        assert dotted in str(exc) and "leading zero" in str(exc)
        return
    assert accepted_or_names(mutated(tuple(keys), parsed), dotted) is None, (dotted, value)


# YAML with the format's surprises: duplicate keys, anchors and aliases, leading zeros, deep nesting.
SURPRISE = st.sampled_from(
    ["010", "&a 1", "*a", "&b [1, 2]", "<<: *b", ".inf", ".nan", "true", "1e-3", "0x1f", "1:30", "[", "{s: 1, s: 2}"]
)
KEYS = st.sampled_from(["train", "steps", "lr", "seed", "study", "experiments", "x"])


@st.composite
def surprising_yaml(draw) -> str:
    lines, indent = [], 0
    for _ in range(draw(st.integers(1, 8))):
        key = draw(KEYS)
        if draw(st.booleans()):
            lines.append(" " * indent + f"{key}:")
            indent += 2
        else:
            lines.append(" " * indent + f"{key}: {draw(SURPRISE | st.integers(-3, 300).map(str))}")
            indent = draw(st.sampled_from(range(0, indent + 1, 2)))
    return "\n".join(lines) + "\n"


@settings(max_examples=150)
@given(text=surprising_yaml())
def test_surprising_yaml_is_a_config_error_naming_the_file_or_read_as_written(text: str, tmp_path_factory):
    path = tmp_path_factory.mktemp("yaml") / "fuzz.yaml"
    path.write_text(text)
    try:
        from_dict(read_yaml(path), "fuzz.yaml")
    except ConfigError as exc:
        assert "fuzz.yaml" in str(exc)
        return
    for surprise in ("&a", "&b", "*a", ": 010", "{s: 1, s: 2}"):  # these never get through
        assert surprise not in text, text


@settings(max_examples=60)
@given(levels=st.integers(1, 3000), kinds=st.text(alphabet="[{", min_size=1, max_size=5))
def test_nesting_of_any_depth_is_read_or_refused_never_a_recursion_error(levels: int, kinds: str, tmp_path_factory):
    opens = "".join(kinds[i % len(kinds)] for i in range(levels))
    json_text = '{"train": ' + "".join("[" if c == "[" else '{"a": ' for c in opens) + "1"
    json_text += "".join("]" if c == "[" else "}" for c in reversed(opens)) + "}"
    yaml_path = tmp_path_factory.mktemp("deep") / "fuzz.yaml"
    yaml_path.write_text(json_text)  # JSON is YAML
    for read in (lambda: read_yaml(yaml_path), lambda: parse_json(json_text, "fuzz.yaml")):
        try:
            from_dict(read(), "fuzz.yaml")
        except ConfigError as exc:
            assert "fuzz.yaml" in str(exc)
            assert levels < 30 or "nested" in str(exc), str(exc)


# -- the study --------------------------------------------------------------------------------------
@settings(max_examples=40)
@given(
    bad=st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]), st.tuples(st.sampled_from(NUMERIC), NOT_A_NUMBER), min_size=1, max_size=3
    )
)
def test_check_study_names_every_bad_experiment_and_its_field(bad: dict):
    experiments = {name: {".".join(path): value} for name, (path, value) in bad.items() if path[0] != "study"}
    if not experiments:
        return
    with pytest.raises(ConfigError) as info:
        check_study({"study": {"experiments": {"fine": {"train.steps": 50}, **experiments}}}, "fuzz.yaml")
    text = str(info.value)
    for name, overrides in experiments.items():
        (key,) = overrides
        assert f"experiment {name!r}" in text and key in text, text
    assert "'fine'" not in text


# -- the study --------------------------------------------------------------------------------------
@settings(max_examples=60)
@given(path=st.sampled_from([p for p in LEAVES if p[0] != "study"]), value=WRONG)
def test_study_override_fuzz_names_the_experiment_and_the_field(path: tuple[str, ...], value: object):
    data = {
        "study": {
            "experiments": {"cell": {".".join(path): value}},
            "figures": {"f": {"title": "t", "experiments": ["cell"]}},
        }
    }
    try:
        study = Study(data, "fuzz.yaml")
    except ConfigError as exc:
        assert "'cell'" in str(exc) and (".".join(path) in str(exc) or path[-1] in str(exc)), str(exc)
        return
    assert study.config("cell") is not None


@settings(max_examples=80)
@given(
    field=st.sampled_from(["experiments", "figures", "stages", "common", "seeds", "lessons", "init_decoder"]),
    value=WRONG | st.dictionaries(st.text(max_size=6), WRONG, max_size=2),
)
def test_study_section_fuzz_names_the_field(field: str, value: object):
    accepted_or_names({"study": {field: value}}, f"study.{field}")


# -- parallel layouts -------------------------------------------------------------------------------
LAYOUT_FIELDS = [  # the widths that must split over tp first: the subtle ones
    ("model", "decoder", "num_query_groups"),
    ("model", "decoder", "ffn_hidden_size"),
    ("model", "encoder", "ffn_hidden_size"),
    ("parallel", "gpus_per_node"),
    ("parallel", "world_size"),
    ("parallel", "tp"),
    ("parallel", "pp"),
    ("parallel", "ep"),
    ("model", "decoder", "num_layers"),
    ("model", "decoder", "num_attention_heads"),
    ("model", "encoder", "num_attention_heads"),
    ("model", "moe", "num_experts"),
    ("model", "moe", "top_k"),
    ("train", "micro_batch_size"),
    ("train", "global_batch_size"),
]


@st.composite
def layouts(draw) -> dict:
    """A layout that divides by construction (world = tp x pp x dp, every width a multiple of tp,
    global batch = micro x dp x k), then, in most examples, one of its sizes redrawn freely."""
    tp, pp, dp = draw(st.sampled_from([1, 2, 4, 8])), draw(st.sampled_from([1, 2, 4])), draw(st.integers(1, 4))
    ep = draw(st.sampled_from([e for e in (1, 2, 4) if dp % e == 0]))
    experts = ep * draw(st.sampled_from([1, 2, 4])) if ep > 1 or draw(st.booleans()) else 0
    heads = tp * draw(st.sampled_from([1, 2]))
    micro = draw(st.sampled_from([1, 2, 4]))
    data = {
        "parallel": {
            "world_size": tp * pp * dp,
            "tp": tp,
            "pp": pp,
            "ep": ep,
            "gpus_per_node": draw(st.sampled_from([None, tp * pp * dp, tp])),
            "distributed_optimizer": draw(st.booleans()),
            "recompute": draw(st.sampled_from(["none", "selective", "full"])),
        },
        "model": {
            "decoder": {
                "num_layers": pp * draw(st.sampled_from([1, 2])),
                "hidden_size": heads * 8,
                "num_attention_heads": heads,
                "num_query_groups": draw(st.sampled_from([None, heads, tp])),
                "ffn_hidden_size": tp * draw(st.sampled_from([8, 24])),
            },
            "encoder": {
                "num_attention_heads": heads,
                "hidden_size": 64,
                "ffn_hidden_size": tp * draw(st.sampled_from([8, 16])),
                "clip": {"text_attention_heads": heads},
            },
            "moe": {"num_experts": experts, "top_k": min(2, experts) or 2, "layer_freq": draw(st.integers(1, 3))},
        },
        "train": {"micro_batch_size": micro, "global_batch_size": micro * dp * draw(st.sampled_from([1, 2, 3]))},
    }
    if draw(st.sampled_from([True, True, True, False])):  # three in four: one size redrawn
        *parents, last = draw(st.sampled_from(LAYOUT_FIELDS))
        node = data
        for key in parents:
            node = node[key]
        node[last] = draw(st.sampled_from([1, 10, 12, 2, 3, 4, 6, 8, 16, 64]))
    return data


def rank_groups(tp: int, pp: int, ep: int, world: int) -> None:
    """megatron's rank groups for the layout, as initialize_model_parallel builds them (no processes)."""
    from megatron.core.parallel_state import RankGenerator

    order = "tp-cp-ep-dp-pp"
    dense = RankGenerator(tp=tp, ep=1, dp=world // (tp * pp), pp=pp, cp=1, order=order)
    expert = RankGenerator(tp=tp, ep=ep, dp=world // (tp * ep * pp), pp=pp, cp=1, order=order)
    for gen, names in ((dense, ("tp", "pp", "dp", "tp-pp", "tp-dp-pp")), (expert, ("ep", "tp-ep", "dp", "pp"))):
        for name in names:
            groups = gen.get_ranks(name)
            assert sorted(r for g in groups for r in g) == list(range(world)), (name, groups)
    assert dense.get_ranks("pp") == expert.get_ranks("pp")


@settings(max_examples=100)
@given(data=layouts())
def test_random_layouts_are_refused_naming_the_field_or_build_megatron(data: dict):
    from mm1.models.megatron_config import MegatronLayout, decoder_config, encoder_config
    from mm1.models.size import count_model
    from mm1.plan import layout as plan_layout
    from mm1.plan.estimate import DEFAULT_MFU, plan_of
    from mm1.plan.facts import facts
    from mm1.plan.gpus import find_gpu

    cfg = accepted_or_names(data, "parallel", "model", "train")
    if cfg is None:
        return
    par, model = cfg.parallel, cfg.model
    lay = MegatronLayout(tp=par.tp, pp=par.pp, ep=par.ep, recompute=par.recompute)
    decoder_config(model.decoder, model.moe, lay)
    encoder_config(model.encoder, lay)
    rank_groups(par.tp, par.pp, par.ep, par.world_size)
    assert count_model(model, cfg.tokenizer.vocab_size)["decoder"].total > 0
    planned = plan_layout.ClusterLayout.of(cfg)
    assert plan_layout.problems(planned, cfg) == []
    plan = plan_of(cfg, facts(cfg), planned, find_gpu("h100-80gb"), DEFAULT_MFU)
    assert plan.memory.total > 0


def test_the_layout_fuzz_reaches_both_outcomes():
    """A guard against a vacuous fuzz: the strategy yields accepted and refused layouts."""
    outcomes = []

    @settings(max_examples=60)
    @given(data=layouts())
    def probe(data: dict) -> None:
        try:
            cfg = from_dict(data)
            outcomes.append(("accepted", cfg.parallel.tp > 1))
        except ConfigError:
            outcomes.append(("refused", False))

    probe()
    assert outcomes.count(("accepted", True)) >= 5 and outcomes.count(("refused", False)) >= 5, outcomes
