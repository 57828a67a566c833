rule figure:
    """The miniature study's figure: the base run's loss curve and its few-shot scores, plus the table."""
    input:
        metrics=f"results/train/{STUDY.run_of('train', 'base')}/metrics.csv",
        scores=f"results/eval/{STUDY.run_of('eval', 'base')}/scores.csv",
    output:
        png="results/figures/tiny_study.png",
        table="results/figures/tiny_study.csv",
        provenance="results/figures/tiny_study.provenance.json",
    threads: 1
    resources:
        **light(),
    log:
        "logs/figures/tiny_study.log",
    benchmark:
        "benchmarks/figures/tiny_study.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 figure --metrics {input.metrics:q} --scores {input.scores:q} "
        "--out $(dirname {output.png:q}) > {log:q} 2>&1"


rule compare:
    """A paper figure or table (study.figures): its experiments' scores side by side."""
    input:
        unpack(cells),
    output:
        png="results/figures/{fig}.png",
        table="results/figures/{fig}.csv",
        provenance="results/figures/{fig}.provenance.json",
    params:
        title=lambda w: StageConfig(RUN.study.figures[w.fig].title),
        cells=lambda w: " ".join(f"--cell {exp}={path}" for exp, path in cells(w).items()),
    threads: 1
    resources:
        **light(),
    log:
        "logs/figures/{fig}.log",
    benchmark:
        "benchmarks/figures/{fig}.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 compare --id {wildcards.fig} --title {params.title:q} {params.cells} "
        "--out $(dirname {output.png:q}) > {log:q} 2>&1"
