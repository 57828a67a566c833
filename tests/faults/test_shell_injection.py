"""Item 5: names and values from the config can neither escape results/ nor inject shell commands.

Names that become folders or words of a command (experiments, figure ids, the run, data sources,
benchmarks) are refused unless they are plain (letters, digits, _ . -, never "." / ".." / a leading
dot or dash); every placeholder in a rule's ``shell:`` string is quoted (``:q``), and every command
substitution sits inside double quotes. A dry run in a folder named like a shell attack prints
commands that split into exactly the argv they mean, and running them creates nothing.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
from faultkit import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from mm1.config import ConfigError, from_dict
from mm1.config.base import FILE_NAME
from mm1.config.study import NAME
from tinykit import TESTS, load_conftest

pytestmark = pytest.mark.faults(item=5)

HOSTILE = {
    "semicolon": "a;touch PWNED",
    "dollar-paren": "a$(touch PWNED)",
    "backtick": "a`touch PWNED`",
    "newline": "a\n",
    "space": "a b",
    "dotdot": "..",
    "dot": ".",
    "slash": "a/b",
    "leading-dash": "-rf",
    "hidden": ".a",
    "unicode": "zürich",
}
SOURCE = {"url": "file:///dev/null", "sha256": "0" * 64, "format": "jsonl", "role": "text", "licence": "x"}
BENCHMARK = {"task": "vqa", "val": "v.json", "train": "t.json"}


def _where(field: str, name: str) -> dict:
    """A config that puts ``name`` in ``field``."""
    return {
        "experiment": {"study": {"experiments": {name: {}}}},
        "figure": {"study": {"figures": {name: {"title": "t", "experiments": ["base"]}}}},
        "run": {"name": name},
        "source": {"data": {"sources": [{"name": name, **SOURCE}]}},
        "benchmark": {"eval": {"benchmarks": [{"name": name, **BENCHMARK}]}},
    }[field]


FIELDS = {  # what the error must name
    "experiment": "study.experiments",
    "figure": "figure id",
    "run": "name",
    "source": "data.sources.0.name",
    "benchmark": "eval.benchmarks.0.name",
}


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_name_is_a_config_error_naming_the_field(field: str, name: str):
    with pytest.raises(ConfigError) as info:
        from_dict(_where(field, name), "hostile.yaml")
    assert FIELDS[field] in str(info.value) and repr(name) in str(info.value), str(info.value)


@pytest.mark.parametrize("field", FIELDS)
def test_plain_names_are_accepted(field: str):
    assert from_dict(_where(field, "cell_a-1"))


@settings(max_examples=60)
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=8) | st.sampled_from(list(HOSTILE.values())))
def test_a_name_is_accepted_exactly_when_it_is_plain_and_then_stays_inside_its_folder(name: str):
    root = Path("/results/stage")
    plain = re.fullmatch(NAME, name) is not None
    try:
        from_dict(_where("experiment", name))
        accepted = True
    except ConfigError:
        accepted = False
    assert accepted == (plain and name != "base")
    file_ok = re.fullmatch(FILE_NAME, name) is not None
    try:
        from_dict(_where("source", name))
        assert file_ok
    except ConfigError as exc:
        assert not file_ok and "data.sources.0.name" in str(exc)
    for ok in (plain, file_ok):
        if ok:
            assert (root / name).resolve().parent == root and shlex.quote(name) == name
            assert not name.startswith(("-", "."))


# -- the shell strings of the rules --------------------------------------------------------------
RULES = sorted((ROOT / "workflow" / "rules").glob("*.smk")) + [ROOT / "workflow" / "Snakefile"]


def shell_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every ``shell:`` directive's string (adjacent literals joined)."""
    tokens = [
        t
        for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        if t.type not in (tokenize.NL, tokenize.COMMENT)
    ]
    out = []
    for i, tok in enumerate(tokens[:-1]):
        if tok.type == tokenize.NAME and tok.string == "shell" and tokens[i + 1].string == ":":
            parts = []
            for t in tokens[i + 2 :]:
                if t.type in (tokenize.NEWLINE, tokenize.INDENT):
                    continue
                if t.type != tokenize.STRING:
                    break
                parts.append(ast.literal_eval(t.string))
            out.append((tok.start[0], "".join(parts)))
    return out


def unsafe_parts(command: str) -> list[str]:
    """Placeholders without :q, command substitutions outside double quotes, and backticks."""
    problems = [
        f"unquoted placeholder {m}" for m in re.findall(r"(?<!\{)\{[^{}]*\}(?!\})", command) if not m.endswith(":q}")
    ]
    quote = None  # the quote we are inside: None, "'" or '"'
    for i, ch in enumerate(command):
        if quote == "'":
            quote = None if ch == "'" else quote
        elif ch == "\\":
            continue
        elif ch in "'\"":
            quote = None if quote == ch else (quote or ch)
        elif ch == "`":
            problems.append("backtick command substitution")
        elif command.startswith("$(", i) and quote != '"':
            problems.append(f"$(...) outside double quotes at {command[i : i + 30]!r}")
    return problems


def test_the_checker_flags_the_unsafe_forms():
    assert unsafe_parts("mm1 x {params.init} --out $(dirname {output.m:q}) `id`") == [
        "unquoted placeholder {params.init}",
        "$(...) outside double quotes at '$(dirname {output.m:q}) `id`'",
        "backtick command substitution",
        "backtick command substitution",
    ]
    assert unsafe_parts('mm1 x {params.init:q} --out "$(dirname {output.m:q})" > {log:q} 2>&1') == []


def test_every_shell_placeholder_is_quoted():
    found = {f"{p.name}:{line}": text for p in RULES for line, text in shell_strings(p)}
    # every rule with a command: the one rule per stage of the registry, and the four reports
    assert len([w for w in found if w.startswith("stages.smk")]) == 1 and len(found) >= 5, found
    bad = {where: unsafe_parts(text) for where, text in found.items() if unsafe_parts(text)}
    assert not bad, bad


# -- a dry run in a hostile folder -----------------------------------------------------------------
ATTACK = 'it\'s; $(touch PWNED) `touch PWNED` "q"'
STUDY = {
    "study": {
        "seeds": 2,
        "experiments": {"cell-a": {"model.connector.num_tokens": 4}},
        "figures": {"figx": {"title": ATTACK, "experiments": ["base", "cell-a"]}},
        "lessons": {
            "lx": {
                "statement": ATTACK,
                "checks": [{"figure": "figx", "metric": "0-shot", "a": ["cell-a"], "b": ["base"], "expect": "a>b"}],
            }
        },
    }
}
STUB = """#!{python}
import json, os, sys
with open(os.environ["MM1_ARGV_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def _dirname_of(word: str) -> str:
    m = re.fullmatch(r"\$\(dirname (\S+)\)", word)
    return os.path.dirname(shlex.split(m.group(1))[0]) if m else word


@pytest.mark.slow
def test_dry_run_commands_in_a_hostile_folder_split_into_their_argv_and_run_nothing(tmp_path: Path):
    project = load_conftest(TESTS / "workflow").copy_project(tmp_path / "a b;$(touch PWNED)" / "mm1")
    (project / "hostile.yaml").write_text(json.dumps(STUDY))
    cmd = ["snakemake", "-n", "-p", "--forceall", "--configfile", "tests/workflow/smoke.yaml"]
    cmd += ["--config", "studyfile=hostile.yaml", "--", "all", "all_figures", "sft_base"]
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    commands = [
        line.split(": ", 1)[1]
        for line in proc.stdout.splitlines()
        if line.startswith("Shell command: ") and line != "Shell command: None"
    ]
    assert len(commands) >= 20, proc.stdout[-3000:]

    argvs = []
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "mm1" and words[-3] == ">" and words[-1] == "2>&1", command
        assert words[-2].startswith("logs/"), command
        argv = [_dirname_of(w) for w in words[1:-3]]
        if "--config-json" in argv:
            assert isinstance(json.loads(argv[argv.index("--config-json") + 1]), dict)
        argvs.append(argv)
    by_command = {a[0]: a for a in argvs}
    compare = by_command["compare"]
    assert compare[compare.index("--id") + 1] == "figx"
    assert json.loads(compare[compare.index("--spec") + 1])["title"] == ATTACK
    cells = [compare[i + 1] for i, w in enumerate(compare) if w == "--cell"]
    assert cells == [f"{c}=results/eval/{r}" for c, r in (("base", "base"), ("base", "base-s1"))] + [
        f"cell-a=results/eval/{r}" for r in ("cell-a", "cell-a-s1")
    ]
    lessons = by_command["lessons"]
    assert json.loads(lessons[lessons.index("--lessons") + 1])["lx"]["statement"] == ATTACK
    assert lessons[lessons.index("--seeds") :][:2] == ["--seeds", "figx=results/figures/figx.seeds.csv"]
    train = next(
        a for a in argvs if a[0] == "train" and "--init-decoder" in a and "results/pack/cell-a/train.parquet" in a
    )
    assert train[train.index("--init-decoder") :][:4] == [
        "--init-decoder",
        "results/llm/base/checkpoint",
        "--init-encoder",
        "results/encoder/base/checkpoint",
    ]
    assert train[train.index("--out") + 1] == "results/train/cell-a"

    # Run each printed command through the shell with a stub `mm1` that records its argv.
    stub = tmp_path / "bin" / "mm1"
    stub.parent.mkdir()
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    log = tmp_path / "argv.jsonl"
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "MM1_ARGV_LOG": str(log)}
    for command in commands:
        (project / shlex.split(command)[-2]).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["bash", "-c", command], cwd=project, env=env, check=True, timeout=60)
    assert [json.loads(line) for line in log.read_text().splitlines()] == argvs
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()
