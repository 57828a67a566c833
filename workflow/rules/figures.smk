rule figure:
    """The miniature study's figure: the base run's loss curve and its few-shot scores, plus the table."""
    input:
        REPORTS["figure"].inputs,
    output:
        png=report("results/figures/tiny_study.png", caption="../report/tiny_study.rst", category="Base recipe"),
        table=report("results/figures/tiny_study.csv", caption="../report/tiny_study.rst", category="Base recipe"),
        provenance="results/figures/tiny_study.provenance.json",
        config="results/figures/tiny_study.config.yaml",
    log:
        "logs/figures/tiny_study.log",
    benchmark:
        "benchmarks/figures/tiny_study.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: 1
    resources:
        **light(),
    params:
        argv=report_argv("figure"),
    shell:
        "mm1 {params.argv:q} --out results/figures > {log:q} 2>&1"


rule compare:
    """A paper figure or table (study.figures) in the paper's form: mean +- 95% CI over the seed runs
    of each cell, with the paper's values beside ours."""
    input:
        lambda w: REPORTS[w.fig].inputs,
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
        config="results/figures/{fig}.config.yaml",
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
        argv=lambda w: report_argv(w.fig),
    shell:
        "mm1 {params.argv:q} --out results/figures > {log:q} 2>&1"


rule lessons:
    """The paper's six lessons (study.lessons), each tested on the figures' per-seed results."""
    input:
        REPORTS["lessons"].inputs if "lessons" in REPORTS else [],
    output:
        md=report("results/figures/lessons.md", caption="../report/lessons.rst", category="Lessons"),
        table=report("results/figures/lessons.csv", caption="../report/lessons.rst", category="Lessons"),
        provenance="results/figures/lessons.provenance.json",
        config="results/figures/lessons.config.yaml",
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
        argv=report_argv("lessons") if "lessons" in REPORTS else [],
    shell:
        "mm1 {params.argv:q} --out results/figures > {log:q} 2>&1"


rule power:
    """The pilot (study.pilot): the per-run sd of the lessons' metrics and the seeds per arm it implies."""
    input:
        REPORTS["power"].inputs if "power" in REPORTS else [],
    output:
        md=report("results/figures/power.md", caption="../report/power.rst", category="Lessons"),
        table="results/figures/power.csv",
        provenance="results/figures/power.provenance.json",
        config="results/figures/power.config.yaml",
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
        argv=report_argv("power") if "power" in REPORTS else [],
    shell:
        "mm1 {params.argv:q} --out results/figures > {log:q} 2>&1"
