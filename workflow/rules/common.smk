# Shared helpers: the study (base config + experiments), each stage's config per experiment, where
# an experiment's upstream runs live, and the resources of each job.
import functools
import json

from mm1.pipeline import Pipeline
from mm1.stages import STAGES, run_dir
from mm1.study import Study

STUDY = Study(config, "snakemake config")
PIPELINE = Pipeline(STUDY)  # each job's inputs, options and commands (mm1.pipeline, mm1.stages)
RUN = STUDY.base
EXPERIMENTS = STUDY.names
FIGURES = list(RUN.study.figures)
REPORTS = PIPELINE.reports()


wildcard_constraints:
    exp="|".join(EXPERIMENTS),
    fig="|".join(FIGURES) or "no-figures",


class StageConfig:
    """A stage's config JSON as a params value. Not a str, so Snakemake does not expand it as a
    wildcard pattern (a prompt template's "{text}" would read as one); the shell gets str()."""

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text

    def __repr__(self):  # what Snakemake records of a params list: the same text every run, not an address
        return repr(self.text)


def cfg(stage):
    """params: the JSON of the config sections ``stage`` reads, for the job's experiment."""
    return lambda w: StageConfig(STUDY.stage_json(stage, w.exp))


def stage_inputs(stage):
    """A stage's inputs (mm1.stages): each file or folder it reads of upstream runs, named by its option
    or path, and the LLM and encoder checkpoints when study.init_* asks for them."""

    def get(w):
        named = {}
        for i, path in PIPELINE.inputs(stage, w.exp):
            if i.path:
                named[i.stage if i in STAGES[stage].inits else i.option.lstrip("-") or i.path] = path
        return named

    return get


def stage_args(stage):
    """The options that hand the stage's command its inputs."""
    return lambda w: PIPELINE.args(stage, w.exp)


def stage_outputs(stage):
    """The registry's outputs of a stage, under ``results/<stage>/{exp}/``."""
    folder = run_dir(stage, "{exp}")
    return {
        o.name: directory(f"{folder}/{o.path}") if o.folder else f"{folder}/{o.path}" for o in STAGES[stage].outputs
    }


# -- resources -----------------------------------------------------------------------------------
# Training and evaluation jobs of the base recipe take every core Snakemake may use (--cores): its
# stages run one after another. Those of the figure cells take half, at least one, so two run side
# by side: the miniature models are too small for two threads to be twice as fast as one (on
# 2 cores: 0.44 s/step with one thread, 0.33 s with two). Under a cluster executor no total need be
# given: then each asks for 8 (on a GPU cluster cpus_per_task comes from the planner).
try:
    ALL_CORES = workflow.cores
    HALF_CORES = max(1, workflow.cores // 2)
except (WorkflowError, TypeError):
    ALL_CORES = HALF_CORES = 8


def job_threads(w):
    return ALL_CORES if w.exp == "base" else HALF_CORES


# Data and evaluation jobs: one process, the registry's memory and time. Training jobs: the parallel
# layout of their stage config; on a GPU cluster (config gpu=...) nodes, GPUs, memory and time come
# from the layout planner, and so do those of evaluation and data jobs (stage_resources below).
def light(mem_mb=2000, runtime=30):
    return dict(mem_mb=mem_mb, runtime=runtime)


@functools.cache
def _planned(stage_json):
    """The layout planner's SLURM resources for a stage config (one plan per distinct config)."""
    from mm1.config.load import from_dict
    from mm1.plan import job_resources

    return job_resources(from_dict(json.loads(stage_json), "stage config"), GPU)


def training(stage):
    """A training job's resources: on a GPU cluster the planner's nodes, tasks per node, GPUs per
    node, CPUs per task, memory per node and time (mm1.parallel.launch.slurm_resources: the job
    mm1's srun launch expects, one rank per GPU); else the stage config's nodes and constants."""

    def planned(w):
        resolved = json.loads(STUDY.stage_json(stage, w.exp))
        del resolved["name"]
        return _planned(json.dumps(resolved, sort_keys=True))

    if GPU:
        return _slurm_fields(planned)
    return dict(
        mem_mb=4000,
        runtime=120,
        nodes=lambda w: getattr(STUDY.stage_config(stage, w.exp).parallel, "nodes", 1),
    )


SLURM_FIELDS = ("nodes", "tasks", "cpus_per_task", "mem_mb", "runtime", "slurm_extra")


def _slurm_fields(planned):
    """The resources of slurm_resources(planned(w)), each a function of the job's wildcards."""
    from mm1.parallel.launch import slurm_resources

    return {k: (lambda w, k=k: slurm_resources(planned(w))[k]) for k in SLURM_FIELDS}


# Evaluation jobs on a GPU cluster: the planner's inference layout of the checkpoint they run
# (mm1.plan.infer: the smallest TP that holds the weights and KV cache, data-parallel ranks for
# time), one node; `mm1 eval run` relaunches itself on the GPUs it gets.
@functools.cache
def _inferred(stage, exp):
    from mm1.plan.infer import checkpoint_stage, inference_resources

    model = STUDY.stage_config(checkpoint_stage(stage), exp)
    sft = "--sft" in STAGES[stage].command
    return inference_resources(model, STUDY.stage_config(stage, exp).eval, GPU, sft)


def inference(stage):
    return _slurm_fields(lambda w: _inferred(stage, w.exp))


# Data jobs on a GPU cluster: memory and time from the data they make or read (mm1.plan.data_jobs;
# never below the registry's constants, which the miniature study keeps).
@functools.cache
def _data_sized(stage, exp):
    from mm1.plan.data_jobs import data_resources

    s = STAGES[stage]
    return data_resources(s.scales_with, STUDY.stage_config(stage, exp), s.mem_mb, s.runtime, stage == "tokenizer")


def data_sized(stage):
    return {k: (lambda w, k=k: _data_sized(stage, w.exp)[k]) for k in ("mem_mb", "runtime")}


def stage_resources(stage):
    """A stage's resources: the planner's on a GPU cluster (training, evaluation, data), else its constants."""
    s = STAGES[stage]
    if s.training:
        return training(stage)
    if GPU and s.inference:
        return inference(stage)
    if GPU and s.scales_with:
        return data_sized(stage)
    return light(s.mem_mb, s.runtime)


# -- reports ------------------------------------------------------------------------------------
def report_argv(name):
    """A report's command line (mm1.pipeline), --out excluded; StageConfig keeps its JSON unexpanded."""
    return [StageConfig(a) for a in REPORTS[name].argv]
