# Shared helpers: the study (base config + experiments), each stage's config per experiment, where
# an experiment's upstream runs live, and the resources of each job.
import functools
import json

from mm1.study import Study

STUDY = Study(config, "snakemake config")
RUN = STUDY.base
EXPERIMENTS = STUDY.names
FIGURES = list(RUN.study.figures)


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


def cfg(stage):
    """params: the JSON of the config sections ``stage`` reads, for the job's experiment."""
    return lambda w: StageConfig(STUDY.stage_json(stage, w.exp))


def run_of(stage, exp):
    return STUDY.run_of(stage, exp)


def up(stage, path):
    """input: ``results/<stage>/<its run for this experiment>/<path>``."""
    return lambda w: f"results/{stage}/{run_of(stage, w.exp)}/{path}"


DATA = "acquire" if RUN.data.source == "acquired" else "world"  # where pre-training data comes from


def manifest(w):
    return f"results/{DATA}/{run_of(DATA, w.exp)}/manifest.parquet"


# -- resources -----------------------------------------------------------------------------------
# Training and evaluation jobs take every core Snakemake may use (--cores). Under a cluster executor
# no total need be given: then each asks for 8 (on a GPU cluster cpus_per_task comes from the planner).
try:
    JOB_CORES = workflow.cores
except WorkflowError:
    JOB_CORES = 8

# Data and evaluation jobs: one process. Training jobs: the parallel layout of their stage config;
# on a GPU cluster (config gpu=...) nodes, GPUs, memory and time come from the layout planner.
def light(mem_mb=2000, runtime=30):
    return dict(mem_mb=mem_mb, runtime=runtime)


@functools.cache
def _planned(stage_json):
    """The layout planner's SLURM resources for a stage config (one plan per distinct config)."""
    from mm1.config.load import from_dict
    from mm1.plan import job_resources

    return job_resources(from_dict(json.loads(stage_json), "stage config"), GPU)


def training(stage):
    def field(name, local):
        def get(w):
            if GPU:
                resolved = json.loads(STUDY.stage_json(stage, w.exp))
                del resolved["name"]
                return _planned(json.dumps(resolved, sort_keys=True))[name]
            return local(STUDY.stage_config(stage, w.exp))

        return get

    res = dict(
        mem_mb=field("mem_mb", lambda c: 4000),
        runtime=field("runtime", lambda c: 120),
        nodes=field("nodes", lambda c: getattr(c.parallel, "nodes", 1)),
    )
    if GPU:
        res |= dict(gpu=field("tasks", None), tasks=field("tasks", None), tasks_per_gpu=1)
        res |= dict(cpus_per_task=field("cpus_per_task", None))
    return res


# -- inputs that depend on the study ------------------------------------------------------------
def pretrained(w):
    """The LLM and encoder checkpoints multimodal pre-training starts from (study.init_*)."""
    parts = {}
    if RUN.study.init_decoder:
        parts["llm"] = f"results/llm/{run_of('llm', w.exp)}/checkpoint"
    if RUN.study.init_encoder:
        parts["encoder"] = f"results/encoder/{run_of('encoder', w.exp)}/checkpoint"
    return parts


INIT_FLAG = {"llm": "--init-decoder", "encoder": "--init-encoder"}


def cells(w):
    """A paper figure's inputs: the summary of each experiment it compares (eval or sft_eval)."""
    spec = RUN.study.figures[w.fig]
    return {
        exp: f"results/{spec.evaluation}/{run_of(spec.evaluation, exp)}/summary.csv"
        for exp in spec.experiments
    }
