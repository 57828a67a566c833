rule figure:
    """The miniature study's figure: the base run's loss curve and its few-shot scores, plus the table."""
    input:
        metrics=f"results/train/{STUDY.run_of('train', 'base')}/metrics.csv",
        scores=f"results/eval/{STUDY.run_of('eval', 'base')}/scores.csv",
    output:
        png=report("results/figures/tiny_study.png", caption="../report/tiny_study.rst", category="Base recipe"),
        table=report("results/figures/tiny_study.csv", caption="../report/tiny_study.rst", category="Base recipe"),
        provenance="results/figures/tiny_study.provenance.json",
    log:
        "logs/figures/tiny_study.log",
    benchmark:
        "benchmarks/figures/tiny_study.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: 1
    resources:
        **light(),
    shell:
        "mm1 figure --metrics {input.metrics:q} --scores {input.scores:q} "
        '--out "$(dirname {output.png:q})" > {log:q} 2>&1'


rule compare:
    """A paper figure or table (study.figures) in the paper's form: mean +- 95% CI over the seed runs
    of each cell, with the paper's values beside ours."""
    input:
        cells,
    output:
        png=report(
            "results/figures/{fig}.png",
            caption="../report/figure.rst",
            category="Figures and tables",
            labels=lambda w: {"figure": w.fig, "file": "plot"},
        ),
        table=report(
            "results/figures/{fig}.csv",
            caption="../report/figure.rst",
            category="Figures and tables",
            labels=lambda w: {"figure": w.fig, "file": "table"},
        ),
        seeds="results/figures/{fig}.seeds.csv",
        provenance="results/figures/{fig}.provenance.json",
    log:
        "logs/figures/{fig}.log",
    benchmark:
        "benchmarks/figures/{fig}.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: 1
    resources:
        **light(),
    params:
        spec=lambda w: StageConfig(RUN.study.figures[w.fig].model_dump_json()),
        meta=lambda w: StageConfig(figure_meta(w.fig)),
        cells=lambda w: [arg for exp, folder in figure_runs(w.fig) for arg in ("--cell", f"{exp}={folder}")],
    shell:
        "mm1 compare --id {wildcards.fig:q} --spec {params.spec:q} --meta {params.meta:q} {params.cells:q} "
        '--out "$(dirname {output.png:q})" > {log:q} 2>&1'


rule lessons:
    """The paper's six lessons (study.lessons), each tested on the figures' per-seed results."""
    input:
        [f"results/figures/{fig}.seeds.csv" for fig in LESSON_FIGURES],
    output:
        md=report("results/figures/lessons.md", caption="../report/lessons.rst", category="Lessons"),
        table=report("results/figures/lessons.csv", caption="../report/lessons.rst", category="Lessons"),
        provenance="results/figures/lessons.provenance.json",
    log:
        "logs/figures/lessons.log",
    benchmark:
        "benchmarks/figures/lessons.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: 1
    resources:
        **light(),
    params:
        lessons=StageConfig(json.dumps({k: v.model_dump(mode="json") for k, v in RUN.study.lessons.items()})),
        seeds=[arg for fig in LESSON_FIGURES for arg in ("--seeds", f"{fig}=results/figures/{fig}.seeds.csv")],
    shell:
        'mm1 lessons --lessons {params.lessons:q} {params.seeds:q} --out "$(dirname {output.md:q})" > {log:q} 2>&1'


rule power:
    """The pilot (study.pilot): the per-run sd of the lessons' metrics and the seeds per arm it implies."""
    input:
        f"results/figures/{RUN.study.pilot.figure}.seeds.csv" if RUN.study.pilot else [],
    output:
        md=report("results/figures/power.md", caption="../report/power.rst", category="Lessons"),
        table="results/figures/power.csv",
        provenance="results/figures/power.provenance.json",
    log:
        "logs/figures/power.log",
    benchmark:
        "benchmarks/figures/power.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: 1
    resources:
        **light(),
    params:
        metrics=[arg for m in (RUN.study.pilot.metrics if RUN.study.pilot else []) for arg in ("--metric", m)],
        effects=",".join(f"{e:g}" for e in (RUN.study.pilot.effects if RUN.study.pilot else [])),
        seeds=RUN.study.seeds,
    shell:
        "mm1 power --seeds {input:q} {params.metrics:q} --effects {params.effects:q} --study-seeds {params.seeds:q} "
        '--out "$(dirname {output.md:q})" > {log:q} 2>&1'
