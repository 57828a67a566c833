"""Which stage runs an experiment needs, and which of them it shares with other experiments.

Every stage of the registry (:mod:`mm1.stages`) reads some config sections, honours some of an
experiment's overrides and reads the runs of the stages before it (``after``).

A stage's config for an experiment is: the base config, then the experiment's honoured overrides,
then the stage's own overrides (``study.stages``), then, at the SFT stages (``SFT_STAGES``), the
experiment's honoured ``sft_only`` overrides. Those change what fine-tuning sees and nothing upstream:
``{sft_only: {model.encoder.image_size: 48}}`` fine-tunes the same pre-trained model at 48 px (its
position embeddings interpolated on load), as MM1's Fig 7 raises only the SFT resolution.

Two experiments share a stage's run when they apply the same overrides there and share every
upstream run; the run is stored under the first such experiment's name (``base`` first, then
``study.experiments`` in order): ``results/<stage>/<that name>/``.

Every declared experiment starts from ``study.common`` (the ablation scale; ``base`` does not), and
every figure cell runs ``study.seeds`` times: seed k > 0 is the experiment ``<cell>-s<k>`` with
train.seed + k. The seed changes the packing order and the initialisation of multimodal
pre-training (and SFT); the LLM and encoder stages do not read it, so the seeds share them.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

from mm1.config import ConfigError, RunConfig
from mm1.config.load import from_dict
from mm1.config.presets import deep_merge, preset_data
from mm1.config.study import BASE, SFT_ONLY
from mm1.stages import DATA, SFT_STAGES, STAGES


def _honored(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def expand(overrides: dict[str, Any]) -> dict[str, Any]:
    """An experiment's overrides with ``preset: NAME`` replaced by that preset's keys (dotted), so
    ``{preset: vit-l14-336}`` is an encoder swap; the experiment's other keys win over the preset's."""
    if "preset" not in overrides:
        return dict(overrides)
    rest = {k: v for k, v in overrides.items() if k != "preset"}
    names = overrides["preset"] if isinstance(overrides["preset"], list) else [overrides["preset"]]
    keys: dict[str, Any] = {}
    for name in names:
        data = preset_data(str(name))
        data.pop("name")
        keys |= _flat(data)
    return keys | rest


def _nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """{"a.b.c": 1} -> {"a": {"b": {"c": 1}}}."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            child = node.get(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: another override sets {part!r} to a value, not a section")
            node[part] = node = dict(child)  # a copy: the experiment's own dicts stay as declared
        if isinstance(node.get(last), dict):
            if not isinstance(value, dict):
                raise ConfigError(f"override {key!r} replaces a section that other overrides set keys of")
            value = deep_merge(node[last], value)
        node[last] = value
    return out


def check_study(data: dict[str, Any], source: str = "config") -> Study:
    """Validate a config (as its files hold it: ``study`` included) and every run its study declares:
    each experiment resolved over the base config, each seed run, each stage's and each ``sft_only``
    override. Raises one ConfigError listing every failing experiment, each named with its dotted
    fields ("study.yaml, experiment 'cell'): train.steps: ..."); returns the Study when all are valid."""
    return Study(data, source)


class Study:
    """The base config (a dict, as the config file holds it) with its experiments resolved."""

    def __init__(self, data: dict[str, Any], source: str = "config") -> None:
        self.base_data = data
        self.base = from_dict(data, source)
        self.source = source
        study = self.base.study
        self.overrides: dict[str, dict[str, Any]] = {BASE: {}}
        self.sft_only: dict[str, dict[str, Any]] = {BASE: {}}  # overrides only the SFT stages apply
        self._seeds: dict[str, list[str]] = {}
        self._signatures: dict[tuple[str, str], str] = {}
        self._stage_configs: dict[tuple[str, str], RunConfig] = {}
        problems: list[str] = []  # every experiment is checked; one ConfigError lists them all
        for name, overrides in study.experiments.items():
            rest = {k: v for k, v in overrides.items() if k != SFT_ONLY}
            try:
                self.overrides[name] = expand(study.common) | expand(rest)
            except ConfigError as exc:
                problems.append(f"{source}, experiment {name!r}: {exc}")
                continue
            self.sft_only[name] = _flat(overrides.get(SFT_ONLY, {}))
            try:
                self._check_sft_only(name)
            except ConfigError as exc:
                problems.append(str(exc))
        self.names = list(self.overrides)
        problems += self._problems(self.names)
        if not problems:  # seed runs need each cell's valid train.seed
            seed_runs = self._add_seed_runs()
            self.names += seed_runs
            problems += self._problems(seed_runs)  # e.g. train.seed + k past its range
        for stage in study.stages:  # and every stage's own overrides apply
            try:
                self._stage_data(stage, BASE)
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError("\n".join(problems))

    def _add_seed_runs(self) -> list[str]:
        """Each figure cell's seed runs ``<cell>-s<k>`` (train.seed + k); returns their names."""
        study, added = self.base.study, []
        most: dict[str, int] = {}  # per cell: the most seeds any figure asks of it
        for spec in study.figures.values():
            for e in spec.experiments:
                most[e] = max(most.get(e, 1), spec.seeds or study.seeds)
        for exp, n_seeds in most.items():
            self._seeds[exp] = [exp]
            seed = self.config(exp).train.seed
            for k in range(1, n_seeds):
                self.overrides[f"{exp}-s{k}"] = self.overrides[exp] | {"train.seed": seed + k}
                self.sft_only[f"{exp}-s{k}"] = self.sft_only[exp]
                self._seeds[exp].append(f"{exp}-s{k}")
                added.append(f"{exp}-s{k}")
        return added

    def _problems(self, names: list[str]) -> list[str]:
        """The ConfigError of each experiment that is not a valid run as a whole, or whose SFT is not."""
        out = []
        for name in names:
            try:
                self.config(name)
                for stage in SFT_STAGES if self.sft_only[name] else ():
                    try:
                        self._stage_data(stage, name)
                    except ConfigError as exc:
                        raise ConfigError(f"{exc}\n  (with the {SFT_ONLY} overrides of experiment {name!r})") from None
            except ConfigError as exc:
                out.append(str(exc))
        return out

    # -- configs -------------------------------------------------------------------------------
    def config(self, exp: str) -> RunConfig:
        """The experiment's whole run: base + all its overrides (its ``sft_only`` ones reach only the SFT
        stages: :meth:`stage_config`)."""
        self._known(exp)
        try:
            nested = _nested(self.overrides[exp])
        except ConfigError as exc:
            raise ConfigError(f"{self.source}, experiment {exp!r}: {exc}") from None
        data = deep_merge(self.base_data, nested)
        return from_dict({**data, "name": exp}, f"{self.source}, experiment {exp!r}")

    def _check_sft_only(self, exp: str) -> None:
        """Every sft_only key reaches some SFT stage (else it would be silently ignored)."""
        for key in self.sft_only[exp]:
            if not any(_honored(key, STAGES[stage].honors) for stage in SFT_STAGES):
                honoured = sorted({p for stage in SFT_STAGES for p in STAGES[stage].honors})
                raise ConfigError(
                    f"{self.source}, experiment {exp!r}: {SFT_ONLY} override {key!r} reaches no SFT stage; "
                    f"they apply keys under {', '.join(honoured)} (put keys that change pre-training "
                    f"outside {SFT_ONLY})"
                )

    def _stage_data(self, stage: str, exp: str) -> dict[str, Any]:
        spec = STAGES[stage]
        own = {k: v for k, v in self.overrides[exp].items() if _honored(k, spec.honors)}
        extra = self.base.study.stages.get(stage, {})
        sft_only = {k: v for k, v in self.sft_only[exp].items() if _honored(k, spec.honors)}
        where = f"{self.source}, stage {stage} of experiment {exp!r}"
        try:
            data = deep_merge(deep_merge(self.base_data, _nested(own)), _nested(extra))
            data = deep_merge(data, _nested(sft_only)) if stage in SFT_STAGES else data
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        data["name"] = exp
        self._stage_configs[stage, exp] = from_dict(data, where)  # validated once, kept (configs are frozen)
        return data

    def stage_config(self, stage: str, exp: str) -> RunConfig:
        """The config the stage's command runs with for this experiment."""
        if (stage, exp) not in self._stage_configs:
            self._stage_data(stage, exp)
        return self._stage_configs[stage, exp]

    def stage_json(self, stage: str, exp: str) -> str:
        """The sections the stage's command reads, as the JSON its ``--config-json`` gets."""
        resolved = self.stage_config(stage, exp).model_dump(mode="json")
        keys = ("name", *STAGES[stage].reads)
        return json.dumps({k: resolved[k] for k in keys}, sort_keys=True)

    # -- sharing -------------------------------------------------------------------------------
    def upstream(self, stage: str) -> tuple[str, ...]:
        """The stages it reads from, with the data placeholder resolved per data.source."""
        data = "world" if self.base.data.source == "world" else "acquire"
        study = self.base.study
        skipped = {"llm"} if not study.init_decoder else set()
        skipped |= {"encoder"} if not study.init_encoder else set()
        after = STAGES[stage].after
        return tuple(data if s == DATA else s for s in after if not (stage == "train" and s in skipped))

    def _signature(self, stage: str, exp: str) -> str:
        """What the stage's run depends on: its resolved sections (not the name) and its upstream runs."""
        key = (stage, exp)
        if key not in self._signatures:
            resolved = json.loads(self.stage_json(stage, exp))
            del resolved["name"]
            ups = [(up, self._signature(up, exp)) for up in self.upstream(stage)]
            self._signatures[key] = json.dumps([resolved, ups], sort_keys=True)
        return self._signatures[key]

    @cached_property
    def _canonical(self) -> dict[tuple[str, str], str]:
        table: dict[tuple[str, str], str] = {}
        for stage in STAGES:
            first: dict[str, str] = {}
            for exp in self.names:
                table[stage, exp] = first.setdefault(self._signature(stage, exp), exp)
        return table

    def run_of(self, stage: str, exp: str) -> str:
        """The experiment name under which ``stage``'s run for ``exp`` is stored."""
        self._known(exp)
        return self._canonical[stage, exp]

    def runs(self, stage: str, experiments: list[str] | None = None) -> list[str]:
        """The distinct runs of ``stage`` that ``experiments`` (default: all) need, in order."""
        out: list[str] = []
        for exp in experiments or self.names:
            run = self.run_of(stage, exp)
            if run not in out:
                out.append(run)
        return out

    def seed_runs(self, exp: str, n: int | None = None) -> list[str]:
        """The experiment and its seed runs (``<exp>-s<k>``, train.seed + k): a figure cell's runs;
        the first ``n`` of them when given (a figure's own seed count)."""
        self._known(exp)
        runs = list(self._seeds.get(exp, [exp]))
        return runs if n is None else runs[:n]

    def _known(self, exp: str) -> None:
        if exp not in self.overrides:
            raise ConfigError(f"unknown experiment {exp!r}; declared: {', '.join(self.names)}")

    # -- figures -------------------------------------------------------------------------------
    def figure_cells(self, fig: str) -> list[str]:
        figures = self.base.study.figures
        if fig not in figures:
            raise ConfigError(f"unknown figure {fig!r}; declared: {', '.join(figures) or '(none)'}")
        return list(figures[fig].experiments)
