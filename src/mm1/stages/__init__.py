"""The stage registry: the one place that lists the study's stages.

A *stage* is one step of the study that runs once per experiment setting it reads, as
``results/<stage>/<run>/`` (a Snakemake rule of the same name, a DVC ``foreach`` stage of the same
name, a key of ``study.stages``). Each declares

* ``command``: the ``mm1`` command that runs it (several stages share one: ``llm`` and ``sft`` are
  the trainer with another config);
* ``reads``: the config sections its command gets (``--config-json``) and records in provenance;
* ``params``: the dotted config keys it depends on, which DVC tracks (a change elsewhere does not
  rerun it: ``train.log_interval`` reaches the training stages, not the packers);
* ``honors``: the dotted prefixes of an experiment's overrides it applies; the others keep the base
  value (a connector ablation changes ``model.connector``: the pack and train stages honour it, the
  LLM and encoder stages do not, so every connector cell starts from the same LLM and encoder);
* ``inputs``: what it reads of upstream stages' runs, as ``(option, stage, path)``; the upstream
  stages (``after``) are theirs;
* ``outputs``: the files and folders it writes into its run folder (``--out``).

The figure products (``FIGURES``) are the reports over those runs: one figure per ``study.figures``
entry, the base recipe's figure, the lessons and the power pilot, all under ``results/figures/``.

Everything else derives from here: :mod:`mm1.study` (which experiments share a run), the
Snakemake rules' inputs, outputs and commands (``workflow/rules/stages.smk``; tests/workflow checks
the rules against this registry), ``dvc.yaml`` (:mod:`mm1.dvc_stages`), the check of
``study.stages`` keys, and each stage's provenance sections. This module imports nothing of mm1.
"""

from __future__ import annotations

from dataclasses import dataclass

DATA = "data"  # an input from the pre-training data: the world or the acquire stage, per data.source
PACKING = ("model.decoder.seq_length", "model.connector.num_tokens")  # what sequence packing reads of the model
TRAINED = ("model", "parallel", "train")  # what the trainer reads: every training stage's sections
# What sequence packing depends on: the data, the sequence layout, the draw's seed and size, and the
# micro-batch (the packed file's blocks of rows, each checksummed, are one micro-batch: mm1.data.stream).
PACKED = ("data", *PACKING, "train.seed", "train.steps", "train.global_batch_size", "train.micro_batch_size")


@dataclass(frozen=True)
class Input:
    """``option`` of the stage's command gets ``results/<stage>/<its run>/<path>``. An empty option is
    an input the command finds itself (it is still a dependency); an empty path is the run folder."""

    option: str
    stage: str
    path: str = ""


@dataclass(frozen=True)
class Output:
    """A file or (``folder=True``) a folder the stage writes into its run folder."""

    name: str  # the rule's output name
    path: str
    folder: bool = False
    show: str = ""  # how DVC shows it: "metric" (dvc metrics show) or "plot" (dvc plots show); else a plain output


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    command: tuple[str, ...]
    reads: tuple[str, ...]
    params: tuple[str, ...]
    honors: tuple[str, ...]
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    sft_only: bool = False  # it applies an experiment's sft_only overrides (MM1 Fig 7: SFT resolution)
    training: bool = False  # its resources come from the parallel layout (GPUs under SLURM)
    multicore: bool = False  # it uses the job's threads (training, evaluation); the others run on one core
    # it runs a checkpoint (its --checkpoint input) on GPUs under SLURM, in a layout mm1.plan.infer sizes
    inference: bool = False
    # what its memory and time grow with on a GPU cluster (mm1.plan.data_jobs): "sequences" (the run's
    # train.steps x global_batch_size), "sources" (data.sources' bytes); "" = the constants below
    scales_with: str = ""
    mem_mb: int = 2000  # a single-process job's memory and time limit (minutes) on a cluster
    runtime: int = 30
    # study.init_decoder / study.init_encoder: the checkpoints it may start from (multimodal pre-training)
    inits: tuple[Input, ...] = ()
    scored: tuple[str, ...] = ()  # the outputs a figure reads of its runs (study.figures.<id>.evaluation)

    @property
    def after(self) -> tuple[str, ...]:
        """The stages whose runs it reads, in input order (``DATA`` stands for world or acquire)."""
        seen: list[str] = []
        for i in (*self.inputs, *self.inits):
            if i.stage not in seen:
                seen.append(i.stage)
        return tuple(seen)

    def output(self, name: str) -> Output:
        return next(o for o in self.outputs if o.name == name)


MANIFEST = Input("--manifest", DATA, "manifest.parquet")
TOKENIZER = Input("--tokenizer", "tokenizer", "tokenizer.json")
# What every stage that records its provenance writes beside its outputs (mm1.provenance.record).
RECORD = (Output("provenance", "provenance.json"), Output("config", "config.yaml"))


def _trained(*extra: Output) -> tuple[Output, ...]:
    """A training stage's outputs, DVCLive's files among them (mm1.train.metrics: the latest values for
    ``dvc metrics show``/``dvc exp show`` and one history per metric for ``dvc plots show``). Its
    resumable checkpoints (``resume/``) are not outputs: a rerun resumes from them."""
    dvclive = (Output("live", "dvclive/metrics.json", show="metric"), Output("history", "dvclive/plots", True, "plot"))
    curve = Output("metrics", "metrics.csv", show="plot")
    return (Output("checkpoint", "checkpoint", folder=True), curve, *extra, *dvclive, *RECORD)


def _packed(*extra: Output, sharded: bool = False) -> tuple[Output, ...]:
    """A packing stage's outputs: ``train.parquet`` is a file, or a folder of shards (``sharded``:
    the pre-training packs, mm1.data.packed_io.write_shards)."""
    packed = Output("packed", "train.parquet", folder=sharded)
    return (packed, *extra, Output("quarantine", "quarantine.parquet"), *RECORD)


def _evaluated() -> tuple[Output, ...]:
    files = (
        Output("scores", "scores.csv"),
        Output("summary", "summary.csv"),
        Output("metrics", "metrics.json", show="metric"),
    )
    return (Output("predictions", "predictions", folder=True), *files, *RECORD)


_STAGES = (
    Stage(
        "world",
        "Write the synthetic MM1 world as real-format datasets, benchmarks and SFT data, with a manifest.",
        command=("world",),
        reads=("world",),
        params=("world",),
        honors=("world",),
        inputs=(),
        outputs=(
            *(Output(n, n, folder=True) for n in ("captions", "interleaved", "text", "benchmarks", "sft")),
            Output("samples", "samples.png"),
            Output("manifest", "manifest.parquet"),
            *RECORD,
        ),
    ),
    Stage(
        "acquire",
        "Download, verify and read the datasets listed in data.sources (used when data.source=acquired).",
        command=("acquire",),
        reads=("data",),
        params=("data",),
        honors=("data.source", "data.sources", "data.max_bad_fraction", "data.fetch"),
        inputs=(),
        outputs=(Output("manifest", "manifest.parquet"), Output("quarantine", "quarantine.parquet"), *RECORD),
        runtime=240,
        scales_with="sources",
    ),
    Stage(
        "tokenizer",
        "Train the BPE tokenizer on the text of the pre-training sources.",
        command=("tokenizer",),
        reads=("tokenizer", "data"),
        params=("tokenizer", "data"),
        honors=("tokenizer",),
        inputs=(MANIFEST,),
        outputs=(Output("tokenizer", "tokenizer.json"), *RECORD),
        scales_with="sources",
    ),
    # The LLM is the paper's fixed pre-trained LLM: only the decoder's shape and layout reach it.
    Stage(
        "llm_pack",
        "Text-only pre-training sequences (the text source of the mixture alone).",
        command=("pack",),
        reads=("data", "model", "train"),
        params=PACKED,
        honors=("model.decoder.seq_length",),
        inputs=(MANIFEST, TOKENIZER),
        outputs=_packed(Output("mixture", "mixture.csv"), sharded=True),
        mem_mb=4000,
        scales_with="sequences",
    ),
    Stage(
        "llm",
        "Text-only pre-training of the decoder; multimodal pre-training starts from it (--init-decoder).",
        command=("train",),
        reads=TRAINED,
        params=TRAINED,
        honors=("model.decoder", "model.moe", "parallel", "train.init_from"),
        inputs=(Input("--packed", "llm_pack", "train.parquet"), TOKENIZER),
        outputs=_trained(),
        training=True,
        multicore=True,
    ),
    # One encoder per encoder setting (Table 1: objective, size, resolution).
    Stage(
        "encoder",
        "Image-encoder pre-training with the CLIP or AIM head (model.encoder.objective; MM1 Table 1).",
        command=("encoder",),
        reads=("data", "model", "parallel", "train"),
        params=("data", "model", "parallel", "train"),  # its checkpoint records the whole model section
        honors=("model.encoder", "train.init_from"),
        inputs=(MANIFEST, TOKENIZER),
        outputs=_trained(Output("summary", "metrics.json", show="metric"), Output("figure", "encoder.png")),
        training=True,
        multicore=True,
    ),
    Stage(
        "pack",
        "Draw the run's pre-training sequences from the caption/interleaved/text mixture and pack them.",
        command=("pack",),
        reads=("data", "model", "train"),
        params=PACKED,
        honors=(
            "data.mixture",
            "data.max_bad_fraction",
            *PACKING,
            "train.seed",
            "train.steps",
            "train.warmup_steps",  # not read, but it must stay below train.steps for the config to validate
            "train.global_batch_size",
        ),
        inputs=(MANIFEST, TOKENIZER),
        outputs=_packed(Output("mixture", "mixture.csv"), sharded=True),
        mem_mb=4000,
        scales_with="sequences",
    ),
    Stage(
        "train",
        "Multimodal pre-training (megatron-core) from the LLM and encoder stages.",
        command=("train",),
        reads=TRAINED,
        params=TRAINED,
        honors=TRAINED,
        inputs=(Input("--packed", "pack", "train.parquet"), TOKENIZER),
        inits=(Input("--init-decoder", "llm", "checkpoint"), Input("--init-encoder", "encoder", "checkpoint")),
        outputs=_trained(),
        scored=("metrics.csv",),
        training=True,
        multicore=True,
    ),
    Stage(
        "eval",
        "Few-shot (eval.shots) captioning and VQA on every benchmark of eval.benchmarks, and TextCore.",
        command=("eval", "run"),
        reads=("eval", "sft"),
        params=("eval", "sft"),
        honors=("eval",),
        inputs=(
            Input("--data", "world"),
            Input("", "world", "benchmarks"),
            TOKENIZER,
            Input("--checkpoint", "train", "checkpoint"),
        ),
        outputs=_evaluated(),
        scored=("summary.csv", "scores.csv"),
        multicore=True,
        inference=True,
        mem_mb=4000,
        runtime=60,
    ),
    Stage(
        "sft_pack",
        "Instruction conversations -> SFT sequences (loss on answers; sft.image_grid splits pictures).",
        command=("sft-pack",),
        reads=("data", "model", "sft"),
        params=("data", "sft", *PACKING, "model.encoder.image_size"),
        honors=("data.max_bad_fraction", "sft", *PACKING, "model.encoder.image_size"),
        inputs=(MANIFEST, TOKENIZER),
        outputs=_packed(),
        sft_only=True,
        mem_mb=4000,
        scales_with="sources",
    ),
    Stage(
        "sft",
        "Supervised fine-tuning of the pre-trained model (the trainer, started from its checkpoint).",
        command=("train",),
        reads=TRAINED,
        params=TRAINED,
        honors=(*TRAINED, "sft"),
        inputs=(Input("--packed", "sft_pack", "train.parquet"), TOKENIZER, Input("--init", "train", "checkpoint")),
        outputs=_trained(),
        sft_only=True,
        training=True,
        multicore=True,
    ),
    Stage(
        "sft_eval",
        "The SFT checkpoint 0-shot on every benchmark, in the sft chat template, and multiple choice.",
        command=("eval", "run", "--sft"),
        reads=("eval", "sft"),
        params=("eval", "sft"),
        honors=("eval", "sft"),
        inputs=(
            Input("--data", "world"),
            Input("", "world", "benchmarks"),
            Input("", "world", "sft"),
            TOKENIZER,
            Input("--checkpoint", "sft", "checkpoint"),
        ),
        outputs=_evaluated(),
        scored=("summary.csv", "scores.csv"),
        sft_only=True,
        multicore=True,
        inference=True,
        mem_mb=4000,
        runtime=60,
    ),
)
STAGES: dict[str, Stage] = {s.name: s for s in _STAGES}
SFT_STAGES = tuple(s.name for s in _STAGES if s.sft_only)
SCORED = tuple(
    s.name for s in _STAGES if s.scored
)  # the stages a figure can compare (FigureSpec.evaluation)  # the stages that apply an experiment's sft_only overrides


@dataclass(frozen=True)
class Product:
    """A report over the stages' runs, written to ``results/figures/`` (``{fig}``: one per study figure)."""

    name: str
    help: str
    outputs: tuple[str, ...]  # file names; a ``{fig}`` in them is the figure's id


FIGURES: dict[str, Product] = {
    p.name: p
    for p in (
        Product(
            "figure",
            "The miniature study's figure: the base run's loss curve and its few-shot scores, plus the table.",
            ("tiny_study.png", "tiny_study.csv", "tiny_study.provenance.json", "tiny_study.config.yaml"),
        ),
        Product(
            "compare",
            "A paper figure or table (study.figures): mean +- 95% CI over each cell's seed runs, the paper's beside.",
            ("{fig}.png", "{fig}.csv", "{fig}.seeds.csv", "{fig}.provenance.json", "{fig}.config.yaml"),
        ),
        Product(
            "lessons",
            "The paper's lessons (study.lessons), each tested on the figures' per-seed results.",
            ("lessons.md", "lessons.csv", "lessons.provenance.json", "lessons.config.yaml"),
        ),
        Product(
            "power",
            "The pilot's power analysis: per-run sd of the metrics and the seeds per arm they imply.",
            ("power.md", "power.csv", "power.provenance.json", "power.config.yaml"),
        ),
    )
}
FIGURES_DIR = "results/figures"


def stage(name: str) -> Stage:
    """The stage called ``name``; a KeyError naming the stages otherwise."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return STAGES[name]


def run_dir(stage_name: str, run: str) -> str:
    """Where a stage's run lives, relative to the project root."""
    return f"results/{stage_name}/{run}"
