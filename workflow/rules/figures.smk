rule figure:
    """The miniature study's figure: loss curve and held-out CIDEr, plus the results table."""
    input:
        metrics="results/train/metrics.csv",
        scores="results/eval/scores.csv",
    output:
        png="results/figures/tiny_study.png",
        table="results/figures/tiny_study.csv",
        provenance="results/figures/provenance.json",
    log:
        "logs/figure.log",
    benchmark:
        "benchmarks/figure.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 figure --metrics {input.metrics} --scores {input.scores} "
        "--out $(dirname {output.png}) > {log} 2>&1"
