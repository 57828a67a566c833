"""dvc.yaml for the study: one ``foreach`` stage per registry stage, one named stage per report.

The stage registry (:mod:`mm1.stages`) and the study (:mod:`mm1.pipeline`) say which runs the
targets need; this module writes them for DVC, in files DVC reads as a DVC user would write them:

* ``params/runs.json`` (``vars``): per stage, its runs and the upstream runs each reads
  (``{"train": {"abl": {"pack": "pack/abl", "tokenizer": "tokenizer/base", ...}}}``);
* ``params/<stage>.json``: per run, the config its command runs with (what Snakemake passes as
  ``--config-json``); the stage's ``params`` name the keys of it the stage depends on (the
  registry's ``params``), so ``train.log_interval`` reruns the training stages and not the packers;
* ``params/reports.json``: each report's command line (a figure's cells, spec and metadata);
* ``dvc.yaml``: ``<stage>: foreach: ${runs.<stage>}`` (DVC names the runs ``train@abl``), each with
  the same command, inputs and outputs as the Snakemake rule; a stage per report (``fig4``,
  ``lessons``, ...), so ``dvc repro fig4`` means what ``snakemake fig4`` means. Every output is
  cached (``dvc pull`` restores it); metrics files are metrics, loss curves and DVCLive's
  histories plots.

No Snakemake code runs here: Snakemake's rules take the same jobs from the same registry, and
tests/workflow/test_dvc.py checks DVC's graph against Snakemake's for every target.

    python -m mm1.dvc_stages --write              # regenerate after changing the config or study
    python -m mm1.dvc_stages --check              # exit 1 when dvc.yaml or params/ are stale
    python -m mm1.dvc_stages --commit [--target T]  # after `snakemake [T]`: its stages into dvc.lock
"""

from __future__ import annotations

import argparse
import difflib
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mm1 import atomic
from mm1.config.presets import deep_merge
from mm1.config.readers import read_yaml
from mm1.pipeline import DEFAULT_TARGETS, TARGETS, Pipeline, assemble
from mm1.stages import DATA, FIGURES_DIR, STAGES, Input, Stage, run_dir
from mm1.study import Study

DVC_YAML = "dvc.yaml"
PARAMS = "params"  # the generated params and vars files
RUNS = f"{PARAMS}/runs.json"
REPORTS = f"{PARAMS}/reports.json"
ALL = (*TARGETS,)  # dvc.yaml holds every job these targets need
HEADER = """\
# GENERATED from the stage registry (mm1.stages) and the study by `python -m mm1.dvc_stages --write`;
# do not edit: change config/*.yaml and regenerate (make dvc). One foreach stage per stage of the study
# (its runs: params/runs.json; each run's config: params/<stage>.json), one stage per figure or report.
#
#   dvc repro fig4            # a figure and every stage run it needs (runs: train@abl, eval@abl, ...)
#   dvc pull fig4 --with-deps # its artifacts from the remote instead
#   dvc params diff; dvc metrics show; dvc plots show; dvc dag fig4
"""


@dataclass(frozen=True)
class Invocation:
    """The workflow's config as Snakemake is given it: ``--configfile`` files and ``--config`` pairs."""

    configfiles: tuple[str, ...] = ()
    config: tuple[str, ...] = ()  # KEY=VALUE, as snakemake --config
    targets: tuple[str, ...] = field(default=())  # targets or result files (default: every target; --commit: all)

    def args(self) -> list[str]:
        return [
            *(["--configfile", *self.configfiles] if self.configfiles else ()),
            *(["--config", *self.config] if self.config else ()),
        ]

    def given(self, root: Path) -> dict[str, Any]:
        """What Snakemake's ``config`` holds before the Snakefile runs: the configfiles, then --config."""
        data: dict[str, Any] = {}
        for f in self.configfiles:
            data = deep_merge(data, read_yaml(Path(root, f), "--configfile"))
        for pair in self.config:
            key, sep, value = pair.partition("=")
            if not sep:
                raise SystemExit(f"--config {pair!r}: expected KEY=VALUE")
            data[key] = yaml.safe_load(value) if value else value
        return data


def pipeline(root: Path, how: Invocation) -> Pipeline:
    setup = assemble(how.given(root), root)
    return Pipeline(Study(setup.config, "the workflow config"))


def wanted(pipe: Pipeline, targets: Sequence[str]) -> list[str]:
    """The files the targets stand for: a named target's (``fig4``, ``all``), or a result file itself."""
    try:
        return [f for t in targets for f in ([t] if "/" in t else pipe.target_files(t))]
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


# -- the files -------------------------------------------------------------------------------------
def _key(i: Input) -> str:
    return "data" if i.stage == DATA else i.stage


def _item(pipe: Pipeline, stage: str, run: str) -> dict[str, str]:
    """The foreach item of one run: per upstream stage, the run folder it reads (``pack/abl``)."""
    return {_key(i): "/".join(path.split("/")[1:3]) for i, path in pipe.inputs(stage, run)}


def _path(i: Input) -> str:
    folder = f"results/${{item.{_key(i)}}}"
    return f"{folder}/{i.path}" if i.path else folder


def _outputs(stage: Stage) -> dict[str, list]:
    """``outs``/``metrics``/``plots`` of a stage (every one cached: results/ is not in git)."""
    out: dict[str, list] = {}
    for o in stage.outputs:
        path = f"{run_dir(stage.name, '${key}')}/{o.path}"
        if o.show == "plot" and not o.folder:
            out.setdefault("plots", []).append({path: {"x": "step", "y": "loss"}})
        else:
            out.setdefault({"metric": "metrics", "plot": "plots"}.get(o.show, "outs"), []).append(path)
    return {k: _Flow(v) for k, v in out.items()}


def _stage_entry(pipe: Pipeline, stage: Stage) -> dict[str, Any]:
    inputs = [*stage.inputs, *pipe.inits(stage.name)]
    cmd = ["mm1", *stage.command, "--config-from", f"{PARAMS}/{stage.name}.json", "${key}"]
    cmd += [a for i in inputs if i.option for a in (i.option, _path(i))]
    cmd += ["--out", run_dir(stage.name, "${key}")]
    body: dict[str, Any] = {"cmd": " ".join(cmd)}
    deps = list(dict.fromkeys(_path(i) for i in inputs if i.path))
    if deps:
        body["deps"] = _Flow(deps)
    body["params"] = [{f"{PARAMS}/{stage.name}.json": _Flow(f"${{key}}.{p}" for p in stage.params)}]
    return {"foreach": f"${{runs.{stage.name}}}", "do": body | _outputs(stage)}


class _Flow(list):
    """A list YAML writes in flow style (``[a, b, ...]``, wrapped): a report's many deps stay short."""


def _report_entry(name: str, outputs: tuple[str, ...], inputs: tuple[str, ...]) -> dict[str, Any]:
    return {
        "cmd": f"mm1 --args-from {REPORTS} {name} --out {FIGURES_DIR}",
        "deps": _Flow(inputs),  # the files it reads of each run (not the run folder: resume/ is no output)
        "params": [{REPORTS: _Flow([name])}],
        "outs": _Flow(outputs),
    }


def generate(root: Path, how: Invocation = Invocation()) -> dict[str, str]:
    """Every generated file (relative path -> text): dvc.yaml and params/*.json."""
    pipe = pipeline(root, how)
    closure, needed = pipe.closure(wanted(pipe, how.targets or ALL))
    runs = {s: [r for stage, r in closure if stage == s] for s in STAGES if any(stage == s for stage, _ in closure)}
    reports = pipe.reports()
    files = {
        RUNS: '{"runs": ' + _json({s: {r: _item(pipe, s, r) for r in rs} for s, rs in runs.items()}).rstrip() + "}\n"
    }
    for s, rs in runs.items():
        files[f"{PARAMS}/{s}.json"] = _json({r: json.loads(pipe.study.stage_json(s, r)) for r in rs})
    files[REPORTS] = _json({n: list(reports[n].argv) for n in needed})
    stages = {s: _stage_entry(pipe, STAGES[s]) for s in runs}
    stages |= {n: _report_entry(n, reports[n].outputs, reports[n].inputs) for n in needed}
    files[DVC_YAML] = HEADER + _yaml({"vars": [RUNS], "stages": stages})
    return files


def _json(data: dict[str, Any]) -> str:
    """One entry per line (a run, a stage's runs): diffs show which runs a change reaches."""
    lines = [f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(data.items())]
    return "{\n" + ",\n".join(lines) + "\n}\n"


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Flow, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", list(data), flow_style=True)
)


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=118, default_flow_style=False)


# -- write, check -----------------------------------------------------------------------------------
def write(root: Path, how: Invocation = Invocation()) -> list[str]:
    files = generate(root, how)
    stale = [f for f in Path(root, PARAMS).glob("*.json") if str(f.relative_to(root)) not in files]
    for f in stale:
        f.unlink()
    for rel, text in files.items():
        atomic.write_text(Path(root, rel), text)
    return list(files)


def check(root: Path, how: Invocation = Invocation()) -> list[str]:
    """The generated files that differ from the committed ones, with a diff of each (empty: up to date)."""
    problems = []
    for rel, text in generate(root, how).items():
        path = Path(root, rel)
        old = path.read_text() if path.is_file() else ""
        if old != text:
            diff = difflib.unified_diff(old.splitlines(), text.splitlines(), rel, "generated", lineterm="", n=1)
            problems.append("\n".join(list(diff)[:40]))
    return problems


def stages_for(root: Path, how: Invocation) -> list[str]:
    """The DVC stages (``train@abl``, ``fig4``) of what the targets (default: ``all``) need, upstream first."""
    pipe = pipeline(root, how)
    runs, reports = pipe.closure(wanted(pipe, how.targets or DEFAULT_TARGETS))
    return [f"{s}@{r}" for s, r in runs] + reports


# -- commit: record in DVC what Snakemake just built -------------------------------------------------
# The study runs through Snakemake (``make study``), so DVC has seen none of it: ``dvc status`` calls
# every stage changed and ``dvc repro`` would redo the study. ``dvc commit`` records a stage's deps,
# params and outs as they are now, which is right only for outputs that are up to date; so this first
# asks Snakemake's dry run of the same targets and config (its command line) that nothing is left to
# do, then commits exactly the DVC stages of what the targets need (``train@abl``, ``fig4``).
NOTHING = "Nothing to be done"  # what Snakemake's dry run prints when every requested file is up to date


def pending(root: Path, how: Invocation) -> str | None:
    """What Snakemake's dry run of the targets says is left to do (None: nothing), through its CLI."""
    cmd = [sys.executable, "-m", "snakemake", "--dry-run", "--quiet", "rules", "--cores", "1", *how.args()]
    proc = subprocess.run([*cmd, "--", *how.targets], cwd=root, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode == 0 and NOTHING in text:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " / ".join(lines[-12:]) or f"snakemake exited {proc.returncode}"


def _in_git_clone(root: Path) -> bool:
    if shutil.which("git") is None:
        return False
    probe = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=root, capture_output=True, text=True)
    return probe.returncode == 0 and probe.stdout.strip() == "true"


def commit(root: Path, how: Invocation) -> int:
    root = Path(root).resolve()
    if not (root / ".dvc").is_dir() or not _in_git_clone(root):
        print(f"{root} is not a git clone with DVC (.dvc/): nothing recorded (DVC versions a git repository)")
        return 0
    left = pending(root, how)
    if left is not None:
        target = " ".join(how.targets) or "the default target"
        again = " ".join(["snakemake", "--cores", "all", *how.args(), *how.targets])
        raise SystemExit(f"Snakemake has work left for {target} ({left}): run `{again}` first, then commit")
    stale = check(root, Invocation(how.configfiles, how.config))
    if stale:
        regen = " ".join(["python -m mm1.dvc_stages --write", *how.args()])
        raise SystemExit(
            f"{DVC_YAML} or {PARAMS}/ does not match this config (it was edited since they were written): "
            f"regenerate them with `{regen}` (make dvc), then commit"
        )
    names = stages_for(root, how)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "commit", "--force", "--quiet", *names], cwd=root, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"dvc commit failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")
    target = " ".join(how.targets) or "the default target"
    print(f"recorded {len(names)} DVC stage(s) of {target} in dvc.lock: `dvc status` is clean for them")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mm1.dvc_stages", description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", nargs="?", const=DVC_YAML, metavar="DVC_YAML", help="write dvc.yaml and params/")
    mode.add_argument("--check", nargs="?", const=DVC_YAML, metavar="DVC_YAML", help="exit 1 if they are stale")
    mode.add_argument("--commit", action="store_true", help="record the built stages of --target in dvc.lock")
    p.add_argument("--configfile", nargs="+", default=[], help="as snakemake --configfile")
    p.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE", help="as snakemake --config")
    p.add_argument(
        "--target", action="append", default=[], help="a target or result file (repeat); --commit: one that was built"
    )
    p.add_argument("--root", type=Path, default=Path.cwd(), help="the project root (default: the current folder)")
    args = p.parse_args(argv)
    how = Invocation(tuple(args.configfile), tuple(args.config), tuple(args.target))
    for given in (args.write, args.check):
        if given not in (None, DVC_YAML):
            p.error(f"dvc.yaml is written at the root as {DVC_YAML} (got {given})")
    if args.commit:
        return commit(args.root, how)
    if args.write:
        files = write(args.root, how)
        print(f"wrote {len(files)} files: {DVC_YAML} and {PARAMS}/")
        return 0
    problems = check(args.root, how)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        regen = " ".join(["python -m mm1.dvc_stages --write", *how.args()])
        print(f"{DVC_YAML} or {PARAMS}/ is stale: regenerate with `{regen}` (make dvc)", file=sys.stderr)
        return 1
    print(f"{DVC_YAML} and {PARAMS}/ match the stage registry and the study")
    return 0


if __name__ == "__main__":
    sys.exit(main())
