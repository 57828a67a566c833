"""How a Table 4 benchmark is declared: task + format, and the benchmarks mm1 refuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mm1.config import EvalConfig, load


def _eval(*benchmarks: dict, shots=(0, 4)) -> EvalConfig:
    return EvalConfig.model_validate({"benchmarks": list(benchmarks), "shots": list(shots)})


@pytest.mark.parametrize(
    ("bench", "match"),
    [
        ({"task": "llava_bench"}, r"LLaVA-Bench-in-the-Wild is not supported: its official score is a GPT-4 judge"),
        ({"task": "MM-Vet"}, r"MM-Vet is not supported"),
        ({"task": "vqa", "format": "mm_vet"}, r"format 'mm_vet': MM-Vet is not supported"),
        ({"task": "yes_no"}, r"task yes_no needs a format, one of \['pope', 'mme'\]"),
        ({"task": "multiple_choice", "format": "pope"}, r"format pope is not one of task multiple_choice's"),
        ({"task": "yes_no", "format": "pope", "train": "x.json"}, r"scored 0-shot; remove its train split"),
        ({"task": "vqa", "split": "val"}, r"split is read only by format scienceqa"),
    ],
)
def test_bad_declarations_say_why(bench: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        _eval({"name": "b", "val": "b.json"} | bench)


def test_table4_benchmarks_need_no_train_split_and_formats_default_per_task() -> None:
    cfg = _eval({"name": "pope", "task": "yes_no", "format": "pope", "val": "p.jsonl"},
                {"name": "coco", "task": "captioning", "val": "c.json", "train": "t.json"})  # fmt: skip
    assert [b.file_format for b in cfg.benchmarks] == ["pope", "coco"]
    with pytest.raises(ValidationError, match=r"have no train split"):
        _eval({"name": "coco", "task": "captioning", "val": "c.json"})


def test_an_unsupported_benchmark_in_a_config_file_is_a_one_line_error(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("eval:\n  benchmarks:\n    - {name: mmvet, task: mm_vet, val: mmvet.json}\n")
    with pytest.raises(ValueError, match=r"eval\.benchmarks.*MM-Vet is not supported") as err:
        load(path)
    assert "Traceback" not in str(err.value)
