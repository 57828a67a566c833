"""The stage registry (mm1.stages) is the one description of the stage graph."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mm1.config import RunConfig
from mm1.stages import DATA, FIGURES, SFT_STAGES, STAGES

SRC = Path(__file__).resolve().parents[1] / "src" / "mm1"
WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"


def covers(prefix: str, key: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def test_each_stage_depends_only_on_keys_of_the_sections_its_command_reads():
    for stage in STAGES.values():
        for key in stage.params:
            assert key.split(".")[0] in stage.reads, f"{stage.name}: param {key} is outside {stage.reads}"


def test_a_logging_setting_reaches_the_training_stages_and_not_the_data_stages():
    reached = {s.name for s in STAGES.values() if any(covers(p, "train.log_interval") for p in s.params)}
    assert reached == {s.name for s in STAGES.values() if s.training}
    seed = {s.name for s in STAGES.values() if any(covers(p, "train.seed") for p in s.params)}
    assert {"pack", "llm_pack", "train"} <= seed and "tokenizer" not in seed


def test_upstream_stages_are_declared_earlier_so_the_registry_order_is_a_topological_order():
    order = {name: i for i, name in enumerate(STAGES)}
    for stage in STAGES.values():
        for up in stage.after:
            assert up == DATA or order[up] < order[stage.name], f"{stage.name} reads {up}, declared after it"


def test_outputs_are_distinct_and_sft_stages_are_the_ones_that_apply_sft_only_overrides():
    for stage in STAGES.values():
        paths = [o.path for o in stage.outputs]
        assert len(set(paths)) == len(paths) and len({o.name for o in stage.outputs}) == len(paths), stage.name
        nested = [p for p in paths if any(p.startswith(q + "/") for q in paths)]
        assert not nested, f"{stage.name}: {nested} lie inside another output (DVC refuses overlapping outs)"
    assert set(SFT_STAGES) == {"sft_pack", "sft", "sft_eval"}
    assert set(FIGURES) == {"figure", "compare", "lessons", "power"}


def _string_lists(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            yield [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        elif isinstance(node, ast.Dict):
            yield [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]


SECTIONS = set(RunConfig.model_fields)  # config sections: world, tokenizer, train, eval, sft are stage names too


def test_no_other_module_or_rule_file_lists_the_stages():
    """grep finds no second list: no literal tuple/list/set/dict keys naming four or more stages outside
    the registry (a module may name the few stages it is about; a list of config sections is not one)."""
    names = set(STAGES)
    found = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "stages":
            continue
        for strings in _string_lists(ast.parse(path.read_text())):
            if len(names & set(strings)) >= 4 and not set(strings) <= SECTIONS | {"name"}:
                found.append(f"{path.relative_to(SRC)}: {sorted(names & set(strings))}")
    for path in [*WORKFLOW.rglob("*.smk"), WORKFLOW / "Snakefile"]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            quoted = set(re.findall(r"[\"'](\w+)[\"']", line))
            if len(names & quoted) >= 4:
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, "stages listed outside mm1.stages:\n" + "\n".join(found)
