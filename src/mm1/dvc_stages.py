"""dvc.yaml generated from the Snakemake DAG: one DVC stage per Snakemake job.

Snakemake owns the graph; this module reads it through Snakemake's API (every job of the target
rules, as ``--forceall`` sees them) and writes the DVC stages that version and reproduce its artifacts:

* name: the rule, then its wildcard values (``train-conn-cabs-t16-r32``); a figure's job takes
  the name of its target rule (``fig4``: the target one job builds, named by that job's wildcard),
  so ``dvc repro fig4`` means what ``snakemake fig4`` means.
* cmd: ``snakemake --cores all --force --allowed-rules RULE -- OUTPUTS``. Snakemake runs the job
  as it always does (log, benchmark, threads, the profile or ``$SNAKEMAKE_PROFILE``), and
  ``--allowed-rules`` leaves every other rule out of its DAG: the inputs are plain files to it, so
  in a fresh clone (no ``.snakemake`` metadata, mtimes from ``dvc checkout``) it never reruns
  upstream work. DVC decides *whether* a stage runs (it deletes the outs first); ``--force`` makes
  Snakemake agree even where an output survived. ``--config``/``--configfile`` given here are
  passed on, so a dvc.yaml made for another study or preset runs that study.
* deps, outs: the job's input and output files (directories included), all cached, so that
  ``dvc pull`` restores every one; ``metrics.json`` is a metric and ``metrics.csv`` a plot.
* params: the config keys behind each JSON config a rule passes in ``params`` (the sections its
  command reads). A section equal to the base config is that section of the file(s) defining it
  (config/default.yaml, a preset's files, the study file, --configfile files); what an override
  changed is the override's declaration (``study.experiments.<name>``, ``study.common``,
  ``study.seeds`` for a seed run ``<name>-s<k>``, ``study.stages.<rule>``, plus every file of a
  preset it names). A difference nothing declared explains is an error, not a
  silently missing param.

    python -m mm1.dvc_stages --write dvc.yaml   # regenerate after changing rules or the study
    python -m mm1.dvc_stages --check dvc.yaml   # exit 1 when dvc.yaml is stale (CI, tests)
    python -m mm1.dvc_stages --commit [--target T]  # after `snakemake [T]`: its stages into dvc.lock
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mm1 import atomic
from mm1.config.readers import read_yaml

SNAKEFILE = "workflow/Snakefile"
DEFAULT_CONFIG = "config/default.yaml"  # the Snakefile's base config (it merges preset and study on top)
INVALID = set("!\"#$%&'()*+,./:;<=>?@[\\]^`{|}~")  # DVC stage names: punctuation other than _ and -
# Outputs DVC shows, by file name: (section of the stage, options). Every output is cached: results/
# is git-ignored, so an output with `cache: false` would exist nowhere but in the workspace it was
# made in, and a fresh clone would rerun its stage after `dvc pull` (deleted outs = changed stage).
SPECIAL: dict[str, tuple[str, dict[str, Any]]] = {
    "metrics.json": ("metrics", {}),
    "metrics.csv": ("plots", {"x": "step", "y": "loss"}),
}
HEADER = """\
# GENERATED from the Snakemake DAG by `python -m mm1.dvc_stages --write dvc.yaml`; do not edit.
# One stage per Snakemake job: same inputs and outputs, the cmd runs that one job through Snakemake,
# params are the config keys the job reads (tests/workflow/test_dvc.py and --check keep them equal).
#
#   dvc repro fig4            # a figure and every stage it needs (others: <rule>-<experiment>)
#   dvc pull fig4 --with-deps # its artifacts from the remote instead
#   dvc params diff; dvc metrics show; dvc plots show
"""


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per DAG job
class Job:
    """One Snakemake job, as DVC needs it."""

    rule: str
    wildcards: tuple[tuple[str, str], ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    configs: tuple[dict, ...]  # the params that are JSON objects: config the job's command reads


@dataclass(frozen=True)
class Dag:
    jobs: list[Job]  # topological order
    targets: dict[str, tuple[str, ...]]  # target rule (no outputs, no command) -> its inputs
    sources: tuple[str, ...]  # the config files, base first, relative to the root
    config: dict  # the workflow's config, as the Snakefile resolved it
    pending: tuple[str, ...] = ()  # with_pending: the jobs Snakemake would run now ("rule {wildcards}")


@dataclass(frozen=True)
class Invocation:
    """How Snakemake is called, for reading the DAG and in every stage's cmd."""

    configfiles: tuple[str, ...] = ()
    config: tuple[str, ...] = ()  # KEY=VALUE, as snakemake --config
    targets: tuple[str, ...] = field(default=())  # default: every target rule ...
    default_only: bool = False  # ... or, when set, the Snakefile's default target (what `snakemake` builds)

    def args(self) -> list[str]:
        return [
            *(["--configfile", *self.configfiles] if self.configfiles else ()),
            *(["--config", *self.config] if self.config else ()),
        ]


# -- reading the DAG -------------------------------------------------------------------------------
@contextlib.contextmanager
def _restoring_cwd() -> Iterator[None]:
    old = Path.cwd()
    try:
        yield
    finally:
        os.chdir(old)


def read_dag(root: Path, how: Invocation = Invocation(), with_pending: bool = False) -> Dag:
    """Every job the target rules need (default: every rule without outputs or command, e.g. all);
    ``with_pending`` also asks Snakemake which of them it would run now (as its dry run does)."""
    from snakemake.api import SnakemakeApi
    from snakemake.cli import parse_config
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, Quietness, ResourceSettings

    root = Path(root).resolve()
    output = OutputSettings(quiet={Quietness.ALL}, enable_file_logging=False)
    settings = ConfigSettings(config=parse_config(how.config), configfiles=[root / f for f in how.configfiles])
    with _restoring_cwd(), SnakemakeApi(output) as api:
        workflow_api = api.workflow(ResourceSettings(cores=1), settings, snakefile=root / SNAKEFILE, workdir=root)
        workflow = workflow_api._workflow  # the API lists no jobs; the workflow it wraps does
        target_rules = [r.name for r in workflow.rules if not r.output and r.norun and not r.has_wildcards()]
        default = [workflow.default_target] if how.default_only and workflow.default_target else target_rules
        targets = set(how.targets or default)
        pending = ()
        if with_pending:
            workflow_api.dag(DAGSettings(targets=targets))
            workflow._prepare_dag(forceall=False, ignore_incomplete=False, lock_warn_only=True, nolock=True)
            workflow._build_dag()
            pending = tuple(f"{j.rule.name} {dict(j.wildcards)}" for j in workflow.dag.needrun_jobs() if j.output)
        workflow_api.dag(DAGSettings(targets=targets, forceall=True))
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
        workflow._build_dag()
        order = {rule.name: i for i, rule in enumerate(workflow.rules)}
        ranked = [(depth, job) for depth, level in enumerate(workflow.dag.toposorted()) for job in level]
        ranked.sort(key=lambda dj: (dj[0], order[dj[1].rule.name], sorted(dj[1].wildcards.items())))
        jobs, goals = [], {}
        for _, job in ranked:
            if job.rule.norun and not job.output:
                goals[job.rule.name] = tuple(map(str, job.input))
                continue
            configs = (_json_object(value) for value in job.params)
            jobs.append(
                Job(
                    rule=job.rule.name,
                    wildcards=tuple((k, str(v)) for k, v in job.wildcards.items()),
                    inputs=tuple(dict.fromkeys(map(str, job.input))),
                    outputs=tuple(map(str, job.output)),
                    configs=tuple(c for c in configs if c is not None),
                )
            )
        sources = _config_sources(workflow, root)
        return Dag(jobs=jobs, targets=goals, sources=sources, config=dict(workflow.config), pending=pending)


def _config_sources(workflow: Any, root: Path) -> tuple[str, ...]:
    """The files the Snakefile built its config from: default.yaml, the preset's files (--config
    preset=), the study file (--config studyfile=), then any --configfile; base first."""
    from mm1.config.presets import PRESETS_DIR

    def rel(path: str | Path) -> str:
        return os.path.relpath(Path(root, path).resolve(), root)

    files = [DEFAULT_CONFIG]
    preset = workflow.globals.get("PRESET")
    if preset:
        files += [rel(f) for f in preset_files(str(preset), PRESETS_DIR)]
    if workflow.globals.get("STUDY_FILE"):
        files.append(rel(workflow.globals["STUDY_FILE"]))
    files += [rel(f) for f in workflow.configfiles]
    return tuple(dict.fromkeys(files))


def preset_files(name: str, directory: Path) -> list[Path]:
    """The preset's file and those of its bases (``base:``), bases first."""
    path = Path(directory) / f"{name}.yaml"
    bases = read_yaml(path, "preset file").get("base") or []
    bases = [bases] if isinstance(bases, str) else bases
    return [*(f for base in bases for f in preset_files(base, directory)), path]


def _json_object(value: Any) -> dict | None:
    text = str(value)
    if not text.startswith("{"):
        return None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


# -- params: which config keys a job reads ---------------------------------------------------------
def _leaves(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            yield from _leaves(sub, f"{prefix}.{key}")
    else:
        yield prefix, value


def _subtrees(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, sub in value.items():
            path = f"{prefix}.{key}" if prefix else key
            yield path, sub
            yield from _subtrees(sub, path)


def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            raise KeyError(dotted)
        data = data[part]
    return data


def _has(data: Any, dotted: str) -> bool:
    try:
        _get(data, dotted)
    except KeyError:
        return False
    return True


class ParamsResolver:
    """Maps the JSON configs of a job to DVC params: ``[{file: [dotted keys]}, {preset file: None}]``."""

    def __init__(self, dag: Dag, root: Path) -> None:
        from mm1.config import RunConfig, from_dict
        from mm1.config.presets import PRESETS_DIR

        self.root = Path(root)
        self.presets = PRESETS_DIR
        known = {k: v for k, v in dag.config.items() if k in RunConfig.model_fields}
        self.resolved = from_dict(known, "snakemake config").model_dump(mode="json")
        self.files = {f: read_yaml(self.root / f) for f in dag.sources}
        study = self.resolved.get("study") or {}
        self.experiments: dict[str, dict] = study.get("experiments") or {}
        self.stage_overrides: dict[str, dict] = study.get("stages") or {}
        self.common: dict[str, Any] = study.get("common") or {}

    def params(self, job: Job) -> list[dict[str, list[str] | None]]:
        keys: list[str] = []
        whole: list[str] = []  # preset files an experiment names: every key of them
        for cfg in job.configs:
            more, files = self._keys(job, cfg)
            keys += more
            whole += files
        by_file: dict[str, list[str] | None] = {}
        for key in dict.fromkeys(keys):
            for f, data in self.files.items():
                if _has(data, key):  # a section that only has defaults (no file sets it) is code
                    by_file.setdefault(f, []).append(key)  # type: ignore[union-attr]
        for f in whole:
            by_file[f] = None
        return [{f: k} for f, k in by_file.items()]

    def _overrides(self, job: Job) -> dict[str, tuple[dict[str, Any], list[str]]]:
        """Declaration key -> (its dotted overrides with presets expanded, the preset files named)."""
        from mm1.study import SFT_ONLY, SFT_STAGES, _flat, expand

        out = {f"study.stages.{job.rule}": (self.stage_overrides.get(job.rule, {}), [])}
        for _, value in job.wildcards:
            seeded = re.fullmatch(r"(.+)-s[0-9]+", value)
            if value not in self.experiments and seeded:  # a seed run: train.seed + k (study.seeds)
                out["study.seeds"] = ({"train.seed": None}, [])
                value = seeded.group(1)
            if value in self.experiments:
                out["study.common"] = (expand(self.common), [])
                declared = self.experiments[value]
                names = declared.get("preset") or []
                files = [
                    f for n in ([names] if isinstance(names, str) else names) for f in preset_files(n, self.presets)
                ]
                over = expand({k: v for k, v in declared.items() if k != SFT_ONLY})
                if job.rule in SFT_STAGES:  # an experiment's overrides of the SFT stages only
                    over |= _flat(declared.get(SFT_ONLY) or {})
                out[f"study.experiments.{value}"] = (
                    over,
                    [os.path.relpath(f, self.root.resolve()) for f in files],
                )
        return out

    def _keys(self, job: Job, cfg: dict) -> tuple[list[str], list[str]]:
        if not set(cfg) <= set(self.resolved):  # not a set of sections: one subtree of the config
            return [self._subtree(job, cfg)], []
        values = {v for _, v in job.wildcards}
        overrides = self._overrides(job)
        keys: list[str] = []
        files: list[str] = []
        for section, value in cfg.items():
            if not isinstance(value, dict) and value != self.resolved[section] and value in values:
                continue  # the config's name = the experiment: a wildcard, in the stage name and cmd
            keys.append(section)
            for leaf, leaf_value in _leaves(value, section):
                if _has(self.resolved, leaf) and _get(self.resolved, leaf) == leaf_value:
                    continue
                why = [
                    k for k, (over, _) in overrides.items() if any(leaf == o or leaf.startswith(o + ".") for o in over)
                ]
                if not why:
                    raise ValueError(
                        f"job {job.rule} {dict(job.wildcards)}: its config {leaf}={leaf_value!r} is neither the "
                        f"config files' value nor an override of study.experiments or study.stages, so DVC "
                        f"could not track it as a param; declare it as an override"
                    )
                keys += why
                files += [f for k in why for f in overrides[k][1]]
        return keys, files

    def _subtree(self, job: Job, cfg: dict) -> str:
        for path, value in _subtrees(self.resolved):
            if value == cfg:
                return path
        raise ValueError(f"job {job.rule} {dict(job.wildcards)}: a params JSON {cfg} is no part of the config")


# -- stages ----------------------------------------------------------------------------------------
def stage_names(dag: Dag) -> dict[Job, str]:
    """``rule-wildcard values``; a target rule named by a wildcard value of the one job that builds
    all its inputs (``fig4`` <- compare[fig=fig4]) gives that job its name."""
    producer = {out: job for job in dag.jobs for out in job.outputs}
    named: dict[Job, str] = {}
    for target, inputs in dag.targets.items():
        makers = {producer.get(f) for f in inputs}
        job = makers.pop() if len(makers) == 1 else None
        if job is not None and target in {v for _, v in job.wildcards}:
            named[job] = target
    names = {}
    for job in dag.jobs:
        name = named.get(job) or "-".join([job.rule, *(v for _, v in job.wildcards)])
        names[job] = "".join("_" if c in INVALID else c for c in name)
    seen: dict[str, Job] = {}
    for job, name in names.items():
        if name in seen:
            raise ValueError(f"two jobs map to the DVC stage name {name!r}: {seen[name]} and {job}")
        seen[name] = job
    return names


def command(job: Job, how: Invocation = Invocation()) -> str:
    words = ["snakemake", "--cores", "all", "--force", *how.args(), "--allowed-rules", job.rule]
    return shlex.join([*words, "--", *job.outputs])


def stage(job: Job, name: str, params: list, how: Invocation = Invocation()) -> dict:
    entry: dict[str, Any] = {"cmd": command(job, how)}
    if job.inputs:
        entry["deps"] = list(job.inputs)
    if params:
        entry["params"] = params
    for out in job.outputs:
        section, options = SPECIAL.get(Path(out).name, ("outs", {}))
        if section == "plots":
            options = {**options, "title": f"{name}: training loss"}
        entry.setdefault(section, []).append({out: options} if options else out)
    return entry


class _Dumper(yaml.SafeDumper):
    """Block lists indented under their key, and no anchors (each stage reads on its own)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def represent_none(self, data: Any) -> Any:  # `- file.yaml:` (every key of it), not `file.yaml: null`
        return self.represent_scalar("tag:yaml.org,2002:null", "")


_Dumper.add_representer(type(None), _Dumper.represent_none)


def generate(root: Path, how: Invocation = Invocation()) -> str:
    """The text of dvc.yaml for the workflow under ``root``."""
    dag = read_dag(root, how)
    resolver = ParamsResolver(dag, Path(root))
    names = stage_names(dag)
    stages = {names[job]: stage(job, names[job], resolver.params(job), how) for job in dag.jobs}
    body = yaml.dump({"stages": stages}, Dumper=_Dumper, sort_keys=False, width=10_000, default_flow_style=False)
    return HEADER + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mm1.dvc_stages", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", metavar="DVC_YAML", type=Path, help="write the generated dvc.yaml here")
    mode.add_argument("--check", metavar="DVC_YAML", type=Path, help="exit 1 if this file differs from the DAG")
    mode.add_argument("--print", action="store_true", help="print the generated dvc.yaml")
    mode.add_argument(
        "--commit",
        action="store_true",
        help="record in dvc.lock the outputs of the stages of --target (default: Snakemake's default target), "
        "once Snakemake has built them: `dvc status` is then clean for them",
    )
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the project root (default: .)")
    parser.add_argument("--target", action="append", default=[], help="Snakemake target (default: every target rule)")
    parser.add_argument(
        "--configfile", nargs="+", action="extend", default=[], help="as snakemake --configfile (repeatable)"
    )
    parser.add_argument(
        "--config", nargs="+", action="extend", default=[], help="KEY=VALUE as snakemake --config (repeatable)"
    )
    args = parser.parse_args(argv)
    how = Invocation(configfiles=tuple(args.configfile), config=tuple(args.config), targets=tuple(args.target))
    if args.commit:
        from mm1.dvc_commit import commit

        return commit(args.root, replace(how, default_only=True))
    text = generate(args.root, how)
    if args.print:
        sys.stdout.write(text)
    elif args.write:
        atomic.write_text(args.write, text)  # a failed or killed write leaves the old dvc.yaml
        print(f"wrote {args.write}: {len(yaml.safe_load(text)['stages'])} stages")
    else:
        current = args.check.read_text() if args.check.exists() else ""
        if current != text:
            diff = list(
                difflib.unified_diff(current.splitlines(), text.splitlines(), str(args.check), "generated", lineterm="")
            )
            print("\n".join(diff[:60] + ([f"... ({len(diff) - 60} more diff lines)"] if len(diff) > 60 else [])))
            print(
                f"{args.check} is stale: it differs from the Snakemake DAG. "
                f"Regenerate it with `python -m mm1.dvc_stages --write {args.check}` (make dvc).",
                file=sys.stderr,
            )
            return 1
        print(f"{args.check} matches the Snakemake DAG")
    return 0


if __name__ == "__main__":
    sys.exit(main())
