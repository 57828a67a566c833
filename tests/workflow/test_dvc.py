"""dvc.yaml is generated from the Snakemake DAG (mm1.dvc_stages) and says what Snakemake says.

Snakemake's side is read here through its CLI (a --forceall dry run), not through the generator's
API walk, so the two views are compared rather than one copied. The end-to-end runs (push, pull,
fresh clones) are in test_dvc_remote.py; the offline plots page is checked at the bottom.
"""

from __future__ import annotations

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

from mm1.dvc_stages import Dag, Invocation, Job, ParamsResolver, command, stage_names


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


def target_rules(cwd: Path) -> list[str]:
    """``snakemake --list-target-rules``: one rule a line, its docstring after it in parentheses."""
    lines = run(["snakemake", "--list-target-rules"], cwd).stdout.splitlines()
    return [line.split()[0] for line in lines if re.match(r"^\w+( \(|$)", line)]


def snakemake_jobs(cwd: Path) -> tuple[list[dict], dict[str, set[str]]]:
    """The jobs every target rule (a rule without outputs) needs, and those targets' inputs."""
    rules = target_rules(cwd)
    everything = dry_run_jobs(cwd, rules)
    targets = {j["rule"]: j["inputs"] for j in everything if not j["outputs"]}
    producer = {out: j for j in everything for out in j["outputs"]}
    needed, todo = {}, [f for inputs in targets.values() for f in inputs]
    while todo:
        job = producer.get(todo.pop())
        if job is not None and id(job) not in needed:
            needed[id(job)] = job
            todo += job["inputs"]
    return list(needed.values()), targets


def dvc_stages(path: Path = REPO / "dvc.yaml") -> dict[str, dict]:
    return yaml.safe_load(path.read_text())["stages"]


def stage_io(stage: dict) -> tuple[set[str], set[str]]:
    outs = {e if isinstance(e, str) else next(iter(e)) for k in ("outs", "metrics", "plots") for e in stage.get(k, [])}
    return set(stage.get("deps", [])), outs


# -- dvc.yaml against the DAG ------------------------------------------------------------------------
def test_committed_dvc_yaml_is_the_generated_one():
    proc = subprocess.run(
        [sys.executable, "-m", "mm1.dvc_stages", "--check", "dvc.yaml"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def dag() -> tuple[list[dict], dict[str, set[str]]]:
    return snakemake_jobs(REPO)


def test_every_snakemake_job_is_one_dvc_stage_with_its_inputs_and_outputs(dag):
    jobs, _ = dag
    stages = dvc_stages()
    by_outs = {frozenset(stage_io(s)[1]): name for name, s in stages.items()}
    assert len(by_outs) == len(stages), "two DVC stages declare the same outputs"
    assert len(jobs) == len(stages), f"{len(jobs)} Snakemake jobs but {len(stages)} DVC stages"
    for job in jobs:
        name = by_outs.get(frozenset(job["outputs"]))
        assert name, f"no DVC stage has the outputs of {job['rule']} {job['wildcards']}: {sorted(job['outputs'])}"
        deps, _ = stage_io(stages[name])
        assert deps == job["inputs"], f"{name}: dvc deps {sorted(deps)} != snakemake inputs {sorted(job['inputs'])}"
        assert f"--allowed-rules {job['rule']} " in stages[name]["cmd"], stages[name]["cmd"]


def test_figure_targets_are_dvc_stages_of_the_same_name(dag):
    """`snakemake fig4` and `dvc repro fig4` name the same thing: the one job that target needs."""
    jobs, targets = dag
    stages = dvc_stages()
    producer = {out: j for j in jobs for out in j["outputs"]}
    named = 0
    for target, inputs in targets.items():
        makers = {id(producer[f]): producer[f] for f in inputs}
        job = next(iter(makers.values())) if len(makers) == 1 else None
        if job is not None and target in job["wildcards"].values():
            assert target in stages and stage_io(stages[target])[1] == job["outputs"], target
            named += 1
    figures = yaml.safe_load((REPO / "config" / "study.yaml").read_text())["study"]["figures"]
    assert named == len(figures), f"{named} figure stages for {len(figures)} figures of config/study.yaml"


def test_dvc_params_are_the_config_sections_each_job_passes(dag):
    jobs, _ = dag
    stages = dvc_stages()
    by_outs = {frozenset(stage_io(s)[1]): name for name, s in stages.items()}
    for job in jobs:
        name = by_outs[frozenset(job["outputs"])]
        keys = {k for entry in stages[name].get("params", []) for ks in entry.values() for k in ks or ()}
        words = shlex.split(job["shell"])  # the command line, as the shell reads its quoting
        passed = json.loads(words[words.index("--config-json") + 1]) if "--config-json" in words else {}
        wildcard_values = set(job["wildcards"].values())
        sections = {k for k, v in passed.items() if not (isinstance(v, str) and v in wildcard_values)}
        assert {k for k in keys if not k.startswith("study.")} == sections, f"{name}: {keys} vs {sections}"
        exps = {re.sub(r"-s[0-9]+$", "", v) for v in wildcard_values}  # a seed run's experiment
        for key in keys - sections:
            if key == "study.seeds":  # only seed runs (<exp>-s<k>) read it
                assert any(re.search(r"-s[0-9]+$", v) for v in wildcard_values), f"{name}: {key}"
            elif key == "study.common":  # every declared experiment, never base
                assert exps - {"base"}, f"{name}: {key}"
            elif key == "study.lessons":
                assert job["rule"] == "lessons", f"{name}: {key}"
            else:  # an override: the job's experiment's or its rule's own, or the figure's spec
                assert key.split(".")[2] in exps | {job["rule"]}, f"{name}: {key}"


# -- the generator's rules, on hand-made jobs --------------------------------------------------------
def _job(rule: str, outputs: tuple[str, ...], inputs: tuple[str, ...] = (), cfg=(), **wildcards: str) -> Job:
    return Job(rule=rule, wildcards=tuple(wildcards.items()), inputs=inputs, outputs=outputs, configs=tuple(cfg))


def test_stage_names_are_rule_and_wildcards_or_the_figure_target_a_job_builds():
    train = _job("train", ("results/train/a.b/ckpt",), exp="a.b")
    fig = _job("compare", ("results/figures/fig4.png",), ("results/train/a.b/ckpt",), fig="fig4")
    sft = _job("sft_eval", ("results/sft_eval/base/scores.csv",), exp="base")
    targets = {"fig4": fig.outputs, "all": (*fig.outputs, *train.outputs), "stages": sft.outputs}
    dag = Dag(jobs=[train, fig, sft], targets=targets, sources=("config/default.yaml",), config={})
    # '.' is not allowed in a DVC stage name; `stages` is a target of one job, but not its name
    assert stage_names(dag) == {train: "train-a_b", fig: "fig4", sft: "sft_eval-base"}
    twin = _job("train", ("results/train/a_b/ckpt",), exp="a_b")
    with pytest.raises(ValueError, match="train-a_b"):
        stage_names(Dag(jobs=[train, twin], targets={}, sources=(), config={}))


def test_command_runs_exactly_that_job_through_snakemake():
    job = _job("train", ("results/train/x/checkpoint", "results/train/x/metrics.csv"), exp="x")
    assert command(job) == (
        "snakemake --cores all --force --allowed-rules train -- results/train/x/checkpoint results/train/x/metrics.csv"
    )
    other_study = Invocation(config=("studyfile=config/study-paper.yaml", "preset=mm1-30b"))
    assert command(job, other_study).startswith(
        "snakemake --cores all --force --config studyfile=config/study-paper.yaml preset=mm1-30b --allowed-rules train --"
    )


def test_params_name_the_config_file_sections_and_the_overrides_that_changed_them(tmp_path: Path):
    config = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    config.setdefault("study", {})["experiments"] = {"wide": {"model.decoder.hidden_size": 256}}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "default.yaml").write_text(yaml.safe_dump(config))
    dag = Dag(jobs=[], targets={}, sources=("config/default.yaml",), config=config)
    resolver = ParamsResolver(dag, tmp_path)
    base = resolver.resolved
    wide_model = json.loads(json.dumps(base["model"]))
    wide_model["decoder"]["hidden_size"] = 256
    job = _job("train", ("o",), exp="wide", cfg=[{"name": "wide", "model": wide_model, "train": base["train"]}])
    assert resolver.params(job) == [{"config/default.yaml": ["model", "study.experiments.wide", "train"]}]
    base_job = _job("train", ("o",), exp="base", cfg=[{"name": "base", "model": base["model"]}])
    assert resolver.params(base_job) == [{"config/default.yaml": ["model"]}]
    stray = _job("train", ("o",), exp="base", cfg=[{"model": wide_model}])  # changed, but by nothing declared
    with pytest.raises(ValueError, match="model.decoder.hidden_size"):
        resolver.params(stray)


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
    assert fresh.returncode == 1 and "job(s) left for the default target" in fresh.stderr, fresh.stderr[-2000:]
    assert "run `snakemake --cores all` first" in fresh.stderr and not (project / "dvc.lock").exists()
