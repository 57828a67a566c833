"""The strict YAML/JSON readers (mm1.config.readers): every surprise of the formats is a ConfigError
that names the file (or override) and the fix -- duplicate keys, anchors and aliases, YAML 1.1 octal,
files that are not mappings, deep nesting, folders, huge or binary files."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from mm1.config import ConfigError, RunConfig, load
from mm1.config.load import parse_override
from mm1.config.readers import MAX_BYTES, MAX_DEPTH, parse_json, parse_yaml, read_yaml


def _file(tmp_path: Path, text: str | bytes, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _refused(path: Path, *fragments: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(path)
    text = str(info.value)
    assert str(path) in text and "\n" not in text, text  # one line naming the file
    for fragment in fragments:
        assert fragment in text, text
    return text


# --- numbers as YAML 1.2 and Python write them ----------------------------------------------------


@pytest.mark.parametrize("text", ["steps: 010", "steps: -010", "steps: 00", "steps: 0_10"])
def test_leading_zero_is_refused_as_ambiguous_not_read_as_octal(tmp_path: Path, text: str) -> None:
    path = _file(tmp_path, f"train:\n  {text}\n")
    if text == "steps: 0_10":  # not a number at all in YAML 1.2: text, which the int field refuses
        with pytest.raises(ConfigError, match="train.steps"):
            load(path)
        return
    _refused(path, "leading zero is ambiguous", "octal", "line 2")


def test_leading_zero_error_suggests_the_decimal_and_the_octal_spelling() -> None:
    with pytest.raises(ConfigError, match="write 10 for the number, 0o10 for octal, or quote it"):
        parse_yaml("steps: 010", "cfg.yaml")


@pytest.mark.parametrize(
    ("text", "value"),
    [("10", 10), ("1_000", 1000), ("0o17", 15), ("0x1f", 31), ("0b101", 5), ("-7", -7), ("0", 0), ("+3", 3)],
)
def test_integers_are_read_as_written(text: str, value: int) -> None:
    assert parse_yaml(f"n: {text}", "cfg.yaml") == {"n": value}


@pytest.mark.parametrize(("text", "value"), [("1e-3", 1e-3), ("1.5E+3", 1500.0), (".5", 0.5), ("010.5", 10.5)])
def test_floats_need_no_dot_in_the_mantissa(text: str, value: float) -> None:
    assert parse_yaml(f"x: {text}", "cfg.yaml") == {"x": value}


def test_colon_numbers_are_text_not_sexagesimal() -> None:
    assert parse_yaml("x: 1:30", "cfg.yaml") == {"x": "1:30"}  # YAML 1.1 reads 90


def test_explicit_octal_in_a_file_is_read(tmp_path: Path) -> None:
    assert load(_file(tmp_path, "train:\n  steps: 0o12\n  warmup_steps: 2\n")).train.steps == 10


# --- duplicates, anchors, aliases -----------------------------------------------------------------


def test_duplicate_keys_are_refused_naming_both_lines(tmp_path: Path) -> None:
    _refused(
        _file(tmp_path, "train:\n  steps: 5\n  lr: 0.1\n  steps: 7\n"), "duplicate key 'steps'", "line 2", "line 4"
    )


def test_duplicate_sections_are_refused(tmp_path: Path) -> None:
    _refused(_file(tmp_path, "train: {steps: 5}\nmodel: {}\ntrain: {lr: 0.1}\n"), "duplicate key 'train'")


@pytest.mark.parametrize(
    "text",
    [
        "train: &t {steps: 5}\neval: *t\n",
        "a: &x 1\n",
        "base: &b {steps: 5}\ntrain:\n  <<: *b\n",
    ],
)
def test_anchors_and_aliases_are_refused(tmp_path: Path, text: str) -> None:
    _refused(_file(tmp_path, text), "anchors or aliases")


def _alias_bomb(levels: int = 9) -> str:
    """The billion laughs: each level lists the previous one 9 times (9**9 leaves from ~460 bytes)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_fails_at_once_in_little_memory(tmp_path: Path) -> None:
    text = _alias_bomb()
    assert len(text) < 600
    path = _file(tmp_path, text)
    tracemalloc.start()
    try:
        _refused(path, "anchor &a0")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"peak {peak} bytes"  # PyYAML's expansion would take gigabytes


# --- the document must be a mapping ---------------------------------------------------------------


@pytest.mark.parametrize("text", ["[]\n", "- a\n- b\n", "false\n", "0\n", "null\n", "just text\n", "'quoted'\n"])
def test_a_config_file_that_is_not_a_mapping_is_refused_naming_the_file(tmp_path: Path, text: str) -> None:
    _refused(_file(tmp_path, text), "must hold a mapping of sections")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_an_empty_file_means_the_defaults(tmp_path: Path, text: str) -> None:
    assert load(_file(tmp_path, text)) == RunConfig()


def test_a_study_file_that_is_a_yaml_list_is_refused_naming_it(tmp_path: Path) -> None:
    path = _file(tmp_path, "- experiments: {}\n- figures: {}\n", "study.yaml")
    with pytest.raises(ConfigError, match=f"study file {path} must hold a mapping"):
        read_yaml(path, "study file")


def test_more_than_one_document_is_refused(tmp_path: Path) -> None:
    _refused(_file(tmp_path, "train: {steps: 5}\n---\ntrain: {steps: 6}\n"), "single document")


# --- nesting --------------------------------------------------------------------------------------


@pytest.mark.parametrize("deep", [MAX_DEPTH + 1, 100_000])
def test_deep_yaml_nesting_is_refused_without_a_recursion_error(tmp_path: Path, deep: int) -> None:
    _refused(_file(tmp_path, "x: " + "[" * deep + "]" * deep + "\n"), f"nested more than {MAX_DEPTH} levels")


def test_nesting_up_to_the_limit_is_read(tmp_path: Path) -> None:
    deep = MAX_DEPTH - 1  # the top-level mapping is one level
    assert parse_yaml("x: " + "[" * deep + "]" * deep, "cfg.yaml")["x"] is not None


@pytest.mark.parametrize(
    "text", ["[" * 100_000 + "]" * 100_000, '{"a": ' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)]
)
def test_deep_json_nesting_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--config-json: nested too deeply"):
        parse_json(text, "--config-json")


# --- JSON (--config-json) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"train": {"steps": 5, "steps": 6}}', "duplicate key 'steps'"),
        ('{"train": {"lr": NaN}}', "NaN is not a JSON number"),
        ('{"train": {"lr": Infinity}}', "Infinity is not a JSON number"),
        ("[]", "must hold a mapping"),
        ("0", "must hold a mapping"),
        ("{", "not valid JSON"),
    ],
)
def test_config_json_is_read_strictly(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_json(text, "--config-json")


# --- --set values follow the same rules ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("train.steps=010", "leading zero is ambiguous"),
        ("train.freeze=&a [encoder]", "anchors or aliases"),
        ("model.decoder={a: 1, a: 2}", "duplicate key 'a'"),
        ("eval.shots=" + "[" * 50 + "]" * 50, "nested more than"),
    ],
)
def test_set_values_follow_the_file_rules(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        parse_override(text)
    assert text.split("=")[0] in str(info.value)


def test_set_reads_1e_minus_3_as_a_number_and_quotes_as_text() -> None:
    assert parse_override("train.lr=1e-3") == (["train", "lr"], 1e-3)
    assert parse_override("name='010'") == (["name"], "010")


# --- files that are not config files --------------------------------------------------------------


def test_a_folder_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "is a folder")


def test_a_binary_file_is_refused(tmp_path: Path) -> None:
    _refused(_file(tmp_path, b"train: \xff\xfe\n"), "not UTF-8")


def test_a_control_character_is_refused(tmp_path: Path) -> None:
    _refused(_file(tmp_path, "train: \x08\n"), "not valid YAML")


def test_a_huge_file_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: no disk used
    _refused(path, "larger than")
