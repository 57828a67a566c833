# Shared helpers: the study (base config + experiments), each stage's config per experiment, where
# an experiment's upstream runs live, and the resources of each job.
import functools
import json

from mm1.study import Study

STUDY = Study(config, "snakemake config")
RUN = STUDY.base
EXPERIMENTS = STUDY.names
FIGURES = list(RUN.study.figures)
LESSON_FIGURES = sorted({check.figure for lesson in RUN.study.lessons.values() for check in lesson.checks})


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


def figure_runs(fig):
    """[(cell, run folder)] of a figure: every seed run of every cell, in order (mm1 compare --cell)."""
    spec = RUN.study.figures[fig]
    return [
        (exp, f"results/{spec.evaluation}/{run_of(spec.evaluation, run)}")
        for exp in spec.experiments
        for run in STUDY.seed_runs(exp, spec.seeds or RUN.study.seeds)
    ]


def cells(w):
    """A paper figure's inputs: the result files of each seed run of each cell it compares."""
    from mm1.figures.compare import FILES  # what mm1 compare reads of each run folder

    files = FILES[RUN.study.figures[w.fig].evaluation]
    return sorted({f"{folder}/{name}" for _, folder in figure_runs(w.fig) for name in files})


def _attr(data, key):
    for part in key.split("."):
        data = data[part]
    return data


def figure_meta(fig):
    """What ``mm1 compare`` needs to place each cell: its values of the figure's x/hue keys, its
    decoder's (active) parameter count and its effective SFT resolution (px x image grid, as its SFT
    stage runs: an experiment's sft_only overrides reach only that stage)."""
    from mm1.models.size import decoder_params

    spec = RUN.study.figures[fig]
    keys = [k for k in (*spec.x, spec.hue) if k and k != "effective_resolution"]
    meta = []
    for exp in spec.experiments:
        c, sft = STUDY.config(exp), STUDY.stage_config("sft", exp)
        data = c.model_dump(mode="json")
        meta.append(
            {"cell": exp}
            | {k: _attr(data, k) for k in keys}
            | {
                "decoder_params": decoder_params(c.model.decoder, c.model.moe, c.tokenizer.vocab_size).active,
                "effective_resolution": sft.model.encoder.image_size * sft.sft.image_grid,
            }
        )
    return json.dumps(meta, sort_keys=True)
