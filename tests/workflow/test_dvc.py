"""dvc.yaml is generated from the stage registry and the study (mm1.dvc_stages) and says what Snakemake says.

Snakemake's side is read here through its CLI (a --forceall dry run with its shell commands) and
DVC's through DVC itself (the stages it resolves from dvc.yaml's foreach and params/), so the two
views are compared rather than one copied. The end-to-end runs (push, pull, fresh clones) are in
test_dvc_remote.py; the offline plots page is checked at the bottom.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_project, run
from mm1.cli import expand_args_from
from mm1.stages import STAGES


# -- Snakemake's view, from a dry run ---------------------------------------------------------------
def dry_run_jobs(cwd: Path, targets: list[str]) -> list[dict]:
    """Every job of ``snakemake -n -p --forceall TARGETS``: rule, wildcards, inputs, outputs, shell."""
    out = run(["snakemake", "-n", "-p", "--forceall", *targets], cwd).stdout
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?(?:rule|checkpoint) \w+:)", out):
        head = re.search(r"^(?:local)?(?:rule|checkpoint) (\w+):", block, flags=re.M)
        if not head:
            continue
        field = dict(re.findall(r"^    (input|output|wildcards): (.*)$", block, flags=re.M))
        shell = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        jobs.append(
            {
                "rule": head.group(1),
                "wildcards": dict(kv.split("=", 1) for kv in field.get("wildcards", "").split(", ") if kv),
                "inputs": set(field.get("input", "").split(", ")) - {""},
                "outputs": set(field.get("output", "").split(", ")) - {""},
                "shell": shell.group(1) if shell else "",
            }
        )
    return jobs


@functools.cache  # one Snakemake start per project (several tests ask)
def target_rules(cwd: Path) -> tuple[str, ...]:
    """``snakemake --list-target-rules``: one rule a line, its docstring after it in parentheses."""
    lines = run(["snakemake", "--list-target-rules"], cwd).stdout.splitlines()
    return tuple(line.split()[0] for line in lines if re.match(r"^\w+( \(|$)", line))


def dvc_stages(path: Path = REPO / "dvc.yaml") -> dict[str, dict]:
    return yaml.safe_load(path.read_text())["stages"]


def resolved_stages(repo: Path) -> dict[str, dict]:
    """DVC's own reading of dvc.yaml: every stage (foreach runs expanded) with its cmd, deps, outs, params."""
    script = (
        "import json, sys\nfrom dvc.repo import Repo\nout = {}\n"
        "for s in Repo(sys.argv[1]).index.stages:\n"
        "    out[s.name] = {'cmd': s.cmd, 'deps': sorted(d.def_path for d in s.deps if not hasattr(d, 'params')),"
        " 'outs': sorted(o.def_path for o in s.outs),"
        " 'params': {p.def_path: sorted(p.params) for p in s.deps if hasattr(p, 'params')}}\n"
        "print(json.dumps(out))\n"
    )
    return json.loads(run([sys.executable, "-c", script, str(repo)], repo).stdout)


def stage_io(stage: dict) -> tuple[set[str], set[str]]:
    outs = {e if isinstance(e, str) else next(iter(e)) for k in ("outs", "metrics", "plots") for e in stage.get(k, [])}
    return set(stage.get("deps", [])), outs


def dvc_name(job: dict) -> str:
    """The DVC stage of a Snakemake job: ``<stage>@<run>`` for a stage run, a figure's id, else the rule."""
    if job["rule"] in STAGES:
        return f"{job['rule']}@{job['wildcards']['exp']}"
    return job["wildcards"].get("fig", job["rule"])


def argv_of(cmd: str, repo: Path) -> tuple[list[str], dict | None]:
    """A command's argv (shell redirection dropped, --args-from expanded) and the config it passes."""
    argv = shlex.split(cmd.split(" > ")[0])
    argv = [argv[0], *expand_args_from(argv[1:])] if "--args-from" in argv else argv
    cfg = None
    if "--config-json" in argv:
        at = argv.index("--config-json")
        cfg, argv = json.loads(argv[at + 1]), argv[:at] + argv[at + 2 :]
    if "--config-from" in argv:
        at = argv.index("--config-from")
        cfg = json.loads((repo / argv[at + 1]).read_text())[argv[at + 2]]
        argv = argv[:at] + argv[at + 3 :]
    return argv, cfg


# -- dvc.yaml against the DAG ------------------------------------------------------------------------
def test_committed_dvc_yaml_and_params_are_the_generated_ones_and_dvc_yaml_is_short():
    proc = subprocess.run([sys.executable, "-m", "mm1.dvc_stages", "--check"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = (REPO / "dvc.yaml").read_text().count("\n")
    assert lines < 400, f"dvc.yaml has {lines} lines"
    stages = dvc_stages()
    assert {n for n, s in stages.items() if "foreach" in s} <= set(STAGES)  # one foreach stage per stage


@pytest.fixture(scope="module")
def views() -> tuple[list[dict], dict[str, dict]]:
    """Snakemake's jobs for every target rule, and DVC's resolved stages."""
    jobs = [j for j in dry_run_jobs(REPO, target_rules(REPO)) if j["outputs"]]
    return jobs, resolved_stages(REPO)


def test_every_snakemake_job_is_one_dvc_stage_with_the_same_command_inputs_and_outputs(views):
    jobs, stages = views
    assert sorted(dvc_name(j) for j in jobs) == sorted(stages), "Snakemake's jobs and DVC's stages differ"
    for job in jobs:
        name = dvc_name(job)
        stage = stages[name]
        assert set(stage["outs"]) == job["outputs"], name
        assert set(stage["deps"]) == job["inputs"], f"{name}: {stage['deps']} != {sorted(job['inputs'])}"
        assert argv_of(stage["cmd"], REPO) == argv_of(job["shell"], REPO), name  # same command, same config


def test_dvc_params_are_the_keys_each_stage_reads_of_its_run_config(views):
    _, stages = views
    for name, stage in stages.items():
        kind, _, run_name = name.partition("@")
        if kind in STAGES:
            assert stage["params"] == {f"params/{kind}.json": sorted(f"{run_name}.{p}" for p in STAGES[kind].params)}, (
                name
            )
        else:
            assert stage["params"] == {"params/reports.json": [name]}, name


def test_figure_targets_are_dvc_stages_of_the_same_name():
    stages = dvc_stages()
    figures = yaml.safe_load((REPO / "config" / "study.yaml").read_text())["study"]["figures"]
    targets = target_rules(REPO)
    for fig in figures:
        assert fig in stages and f"results/figures/{fig}.png" in stages[fig]["outs"], fig
        assert fig in targets


# -- dvc plots show, offline -------------------------------------------------------------------------
TEMPLATE_SCRIPT = REPO / "workflow" / "scripts" / "plots_template.py"
# Evaluates the page's inline scripts in node (no browser, no network), compiles the first plot with data's
# non-empty vega-lite spec with the inlined vega-lite and renders it to SVG with the inlined vega.
RENDER_JS = r"""
const fs = require('fs'), vm = require('vm');
const html = fs.readFileSync(process.argv[process.argv.length - 1], 'utf8');
const ctx = {console, setTimeout, clearTimeout, addEventListener() {}, removeEventListener() {}};
ctx.globalThis = ctx; ctx.window = ctx; ctx.self = ctx;
vm.createContext(ctx);
const inline = [...html.matchAll(/<script type="text\/javascript">([\s\S]*?)<\/script>/g)].map(m => m[1]);
for (const code of inline.filter(c => c.includes('/* vega'))) vm.runInContext(code, ctx);
const specs = [...html.matchAll(/var spec = (\{[\s\S]*?\});\s*vegaEmbed/g)].map(m => JSON.parse(m[1]));
const spec = specs.find(s => Object.keys(s).length);  // plots whose file is absent get an empty spec
const compiled = ctx.vegaLite.compile(spec).spec;
new ctx.vega.View(ctx.vega.parse(compiled), {renderer: 'none'}).toSVG().then(svg => {
  console.log(JSON.stringify({embed: typeof ctx.vegaEmbed, svg_bytes: svg.length,
                              paths: (svg.match(/<path/g) || []).length}));
});
"""


def test_dvc_plots_show_works_in_a_fresh_clone(tmp_path: Path):
    """No template is built in a fresh clone: the committed config names none, and DVC uses its own page."""
    assert "html_template" not in (REPO / ".dvc" / "config").read_text()
    clone = copy_project(tmp_path / "mm1")
    run(["git", "init", "-q"], clone)
    run(["dvc", "plots", "show", "-o", "plots"], clone)
    assert "vegaEmbed(" in (clone / "plots" / "index.html").read_text()


def test_dvc_plots_show_renders_offline_with_the_inlined_template(tmp_path: Path):
    if shutil.which("npm") is None or shutil.which("node") is None:
        if os.environ.get("MM1_NO_NPM") == "1":  # scripts/test-env sets it where node/npm cannot be installed
            pytest.skip("no node/npm for the offline plots template: apt-get install nodejs npm (or make test as root)")
        pytest.fail("the offline plots template needs node and npm: apt-get install nodejs npm", pytrace=False)
    clone = copy_project(tmp_path / "mm1")
    run(["git", "init", "-q"], clone)
    script = clone / TEMPLATE_SCRIPT.relative_to(REPO)  # make plots-template, in this clone
    run([sys.executable, str(script), "--use", "--cache", str(REPO / "build/plots_template/npm")], clone)
    local = (clone / ".dvc" / "config.local").read_text()
    assert re.search(r"html_template = \.\./build/plots_template/offline\.html", local), local
    loss = "step,loss\n" + "".join(f"{i},{5 / (i + 1):.3f}\n" for i in range(20))
    (clone / "results/train/base").mkdir(parents=True)
    (clone / "results/train/base/metrics.csv").write_text(loss)  # one stage's plot output
    run(["dvc", "plots", "show", "-o", "plots"], clone)
    repo = clone
    page = (repo / "plots" / "index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", page), "a script still loads from the network"
    assert "vegaEmbed(" in page and "/* vega@" in page and "/* vega-lite@" in page and "/* vega-embed@" in page
    assert len(page) > 700_000, len(page)  # the three minified builds are ~820 kB
    node = subprocess.run(["node", "-e", RENDER_JS, str(repo / "plots" / "index.html")], capture_output=True, text=True)
    assert node.returncode == 0, "\n".join(line[:300] for line in node.stderr.splitlines()[-20:])
    drawn = json.loads(node.stdout)
    assert drawn["embed"] == "function" and drawn["paths"] >= 1, drawn  # a non-blank SVG with the loss line


# -- make study's second step: what Snakemake built goes into dvc.lock -------------------------------
# (the full-scale test in test_snakemake.py commits the default target after it ran and checks `dvc status`)
def test_commit_refuses_while_snakemake_has_work_left_and_outside_a_clone_records_nothing(tmp_path: Path):
    project = copy_project(tmp_path / "mm1")
    commit = [sys.executable, "-m", "mm1.dvc_stages", "--commit"]
    outside = run(commit, project)  # a copy, not a git clone: DVC cannot version it
    assert "not a git clone" in outside.stdout and not (project / "dvc.lock").exists()
    run(["git", "init", "-q"], project)
    fresh = subprocess.run(commit, cwd=project, capture_output=True, text=True)
    assert fresh.returncode == 1 and "work left for the default target" in fresh.stderr, fresh.stderr[-2000:]
    assert "run `snakemake --cores all` first" in fresh.stderr and not (project / "dvc.lock").exists()
