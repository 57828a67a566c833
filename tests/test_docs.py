"""Every command and path the README and docs/*.md name exists.

The checker reads the markdown's links and code (inline and fenced) and checks what it can name
without running anything: link targets (and their #anchors), repo paths, `make` targets, `mm1`
subcommands, `snakemake` targets (rules and figure ids), `python -m mm1.X` modules, dotted `mm1.X`
names and `pytest -m` markers. Flags are not checked. Outputs (results/, logs/, build/, ...) are
skipped: they exist only after a run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Repo paths a doc may name; a path under one of these folders must exist.
REPO_DIRS = ("src/", "tests/", "bench/", "scripts/", "workflow/", "config/", "docs/", "envs/", "profiles/", ".ci/")
# Top-level files a doc may name (each must exist when named).
TOP_FILES = {
    "Makefile",
    "pyproject.toml",
    "dvc.yaml",
    "constraints.txt",
    "LICENSE",
    "README.md",
    ".dvc/config",
    "requirements.txt",
    "setup.py",
    "setup.cfg",
    "environment.yml",
}
PLACEHOLDER = re.compile(r"[<>{}*?\[\]…]")
SNAKEMAKE_ARG_OPTIONS = {
    "--cores",
    "-c",
    "--jobs",
    "-j",
    "--executor",
    "--configfile",
    "--configfiles",
    "--workflow-profile",
    "--profile",
    "--report",
    "--allowed-rules",
    "--slurm-init-seconds-before-status-checks",
    "--sdm",
    "--software-deployment-method",
    "-s",
    "--snakefile",
    "-d",
    "--directory",
    "--until",
    "--omit-from",
    "--rerun-triggers",
    "--latency-wait",
}
SHELL_STOP = {"#", "\\", ";", "&&", "||", "|", ">", ">>", "2>&1"}


@dataclass
class Known:
    """What exists: the names the docs are checked against."""

    root: Path
    make_targets: set[str] = field(default_factory=set)
    mm1_commands: set[str] = field(default_factory=set)
    snakemake_targets: set[str] = field(default_factory=set)
    markers: set[str] = field(default_factory=set)


@cache
def known_names(root: Path = ROOT) -> Known:
    """Read the Makefile's targets, `mm1 --help`'s subcommands, the workflow's rules and figure ids, the markers."""
    make = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", (root / "Makefile").read_text(), flags=re.M))
    helptext = subprocess.run(
        [sys.executable, "-m", "mm1.cli", "--help"], capture_output=True, text=True, check=True, cwd=root
    ).stdout
    choices = re.search(r"\{([\w,-]+)\}", helptext.partition("positional arguments:")[2])
    assert choices, f"no subcommand list in `mm1 --help`:\n{helptext}"
    rules = set()
    for smk in [root / "workflow/Snakefile", *(root / "workflow").rglob("*.smk")]:
        rules |= set(re.findall(r"^rule\s+(\w+)\s*:", smk.read_text(), flags=re.M))
    for study in ("config/study.yaml", "config/study-paper.yaml"):
        if (root / study).is_file():
            rules |= set(yaml.safe_load((root / study).read_text())["study"]["figures"])
    pytest_ini = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    markers = {re.split(r"[:(]", m, maxsplit=1)[0].strip() for m in pytest_ini.get("markers", [])}
    return Known(root, make, set(choices.group(1).split(",")), rules, markers)


def code_spans(text: str) -> list[tuple[int, str]]:
    """(line number, code) for every line of a fenced block and every inline code span."""
    spans, prose, fenced = [], [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            prose.append("")
        elif fenced:
            spans.append((number, line))
            prose.append("")
        else:
            prose.append(line)
    joined = "\n".join(prose)
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", joined):
        spans.append((joined.count("\n", 0, m.start()) + 1, m.group(1).replace("\n", " ")))
    return sorted(spans)


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link or image outside fenced blocks."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            out += [(number, m.group(1)) for m in re.finditer(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line)]
    return out


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        fenced ^= line.lstrip().startswith("```")
        if not fenced and (m := re.match(r"#+\s+(.+?)\s*#*\s*$", line)):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return found


def words(code: str) -> list[str]:
    """The shell words of a code span, cut at a comment or a pipe; quotes and end punctuation dropped."""
    out = []
    for word in code.split():
        if word in SHELL_STOP or word.startswith("#"):
            break
        out.append(word.strip("'\"(),;"))
    return out


def check_path(word: str, root: Path) -> str | None:
    """A missing repo path named by `word`, or None (also for words that are not repo paths)."""
    word = word.split("::")[0].rstrip(".:,")
    if word.startswith("./"):
        word = word[2:]
    if not (word.startswith(REPO_DIRS) or word in TOP_FILES):
        return None
    fixed = word
    if PLACEHOLDER.search(word):
        parts = word.split("/")
        cut = next(i for i, part in enumerate(parts) if PLACEHOLDER.search(part))
        if all(not re.search(r"[<>{}…]", part) for part in parts):  # a plain glob: it must match something
            return None if list(root.glob(word.rstrip("/"))) else f"no file matches {word}"
        fixed = "/".join(parts[:cut])
    return None if (root / fixed).exists() else f"path {fixed} does not exist"


def check_module(dotted: str, root: Path) -> str | None:
    """A missing `mm1.a.b` module, or a name its module does not define; None when it resolves."""
    parts, path = dotted.rstrip(".").split("."), root / "src" / "mm1"
    for i, part in enumerate(parts[1:], 1):
        if (path / part).is_dir():
            path = path / part
        elif (path / f"{part}.py").is_file():
            path = path / f"{part}.py"
        else:
            source = path / "__init__.py" if path.is_dir() else path
            if i > 1 and source.is_file() and re.search(rf"\b{re.escape(part)}\b", source.read_text()):
                return None  # an attribute of the module: a class, function or constant
            return f"module or name {'.'.join(parts[: i + 1])} does not exist (src/mm1)"
    return None


def check_command(words_: list[str], known: Known) -> list[str]:
    """What a command (make, mm1, snakemake, python -m, pytest -m) names that does not exist."""
    missing = []
    for i, word in enumerate(words_):
        rest = words_[i + 1 :]
        if word == "make":
            target = next((w for w in rest if "=" not in w and not w.startswith("-")), None)
            if target and target not in known.make_targets:
                missing.append(f"make target {target!r} (Makefile)")
        elif word in ("mm1", ".venv/bin/mm1"):
            j = 0
            while j < len(rest) and rest[j].startswith("-"):
                j += 2 if rest[j] == "--log-level" else 1
            if j < len(rest) and re.fullmatch(r"[a-z][\w-]*", rest[j]) and rest[j] not in known.mm1_commands:
                missing.append(f"mm1 subcommand {rest[j]!r} (mm1 --help)")
        elif word == "snakemake":
            for target in snakemake_targets(rest, known):
                missing.append(f"snakemake target {target!r} (workflow rules, study figures)")
        elif word == "-m" and i > 0 and words_[i - 1] in ("python", "python3") and rest:
            if rest[0].startswith("mm1") and (problem := check_module(rest[0], known.root)):
                missing.append(problem)
        elif word == "-m" and "pytest" in words_[:i] and rest:
            for name in re.findall(r"[\w-]+", rest[0]):
                if name not in ("not", "and", "or") and name not in known.markers:
                    missing.append(f"pytest marker {name!r} (pyproject.toml)")
    return missing


def snakemake_targets(rest: list[str], known: Known) -> list[str]:
    """The unknown rule targets among a snakemake command's words (files and options skipped)."""
    unknown, skip, previous = [], False, ""
    for word in rest:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in SNAKEMAKE_ARG_OPTIONS
        elif previous == "--quiet" and word in ("all", "rules", "progress", "host", "reason"):
            pass  # --quiet's optional argument
        elif re.fullmatch(r"[A-Za-z_]\w*", word) and not word.isupper() and word not in known.snakemake_targets:
            unknown.append(word)  # an all-caps word (TARGET) is a placeholder
        previous = word
    return unknown


def check_markdown(text: str, where: Path, known: Known) -> list[str]:
    """Every problem in one markdown text, as 'file:line: what is missing'."""
    name = where.relative_to(known.root) if where.is_relative_to(known.root) else where
    problems = []
    for line, target in links(text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        file = (where.parent / path).resolve()
        if path and not file.exists():
            problems.append(f"{name}:{line}: link target {target} does not exist")
            continue
        headings = anchors(file.read_text() if path else text) if not path or file.suffix == ".md" else None
        if anchor and headings is not None and anchor not in headings:
            problems.append(f"{name}:{line}: link {target}: no heading #{anchor} in {path or name}")
    for line, code in code_spans(text):
        ws = words(code)
        found = [check_path(w, known.root) for w in ws]
        found += [check_module(m, known.root) for m in re.findall(r"(?<![\w/.-])mm1(?:\.\w+)+", code)]
        found += check_command(ws, known)
        problems += [f"{name}:{line}: {p}" for p in dict.fromkeys(found) if p]
    return problems


def test_every_command_and_path_the_docs_name_exists():
    known = known_names()
    problems = [p for doc in DOCS for p in check_markdown(doc.read_text(), doc, known)]
    assert not problems, "the docs name what does not exist:\n" + "\n".join(problems)


def test_the_checker_reports_what_is_missing(tmp_path):
    """The checker must be able to fail: a snippet naming missing things gets one line each."""
    known = known_names()
    doc = ROOT / "docs" / "example.md"
    snippet = "\n".join(
        [
            "# Title",
            "See [the guide](docs/nope.md), [Title](#title), [gone](#gone) and `src/mm1/nope.py`.",
            "```bash",
            "make tset                         # a typo",
            "mm1 trian --config config/default.yaml",
            "snakemake fig99 --cores 2 --configfile tests/workflow/smoke.yaml",
            "python -m mm1.no_such_module --commit",
            "pytest tests/nowhere/test_x.py -m slowest",
            "```",
            "`src/mm1/config/preset_files/*.yaml`, `results/never/made.csv`, `mm1.train.safe_load`, `mm1.train.nothing_here`",
        ]
    )
    problems = check_markdown(snippet, doc, known)
    expected = [
        "docs/example.md:2: link target docs/nope.md does not exist",
        "docs/example.md:2: link #gone: no heading #gone in docs/example.md",
        "docs/example.md:2: path src/mm1/nope.py does not exist",
        "docs/example.md:4: make target 'tset' (Makefile)",
        "docs/example.md:5: mm1 subcommand 'trian' (mm1 --help)",
        "docs/example.md:6: snakemake target 'fig99' (workflow rules, study figures)",
        "docs/example.md:7: module or name mm1.no_such_module does not exist (src/mm1)",
        "docs/example.md:8: path tests/nowhere/test_x.py does not exist",
        "docs/example.md:8: pytest marker 'slowest' (pyproject.toml)",
        "docs/example.md:10: module or name mm1.train.nothing_here does not exist (src/mm1)",
    ]
    assert sorted(problems) == sorted(expected)
    # and what exists passes
    ok = "`make test`, `mm1 train`, `snakemake fig4 --cores all`, `python -m mm1.dvc_stages`, `src/mm1/config/preset_files/*.yaml`"
    assert check_markdown(ok, doc, known) == []
