rule encoder:
    """Image-encoder pre-training with the CLIP or AIM head (model.encoder.objective; MM1 Table 1)."""
    input:
        manifest=DATA_MANIFEST,
        tokenizer="results/tokenizer/tokenizer.json",
    output:
        checkpoint=directory("results/encoder/checkpoint"),
        metrics="results/encoder/metrics.csv",
        provenance="results/encoder/provenance.json",
    params:
        cfg=stage_config("data", "model", "parallel", "train"),
    threads: workflow.cores
    resources:
        mem_mb=4000,
    log:
        "logs/encoder.log",
    benchmark:
        "benchmarks/encoder.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 encoder --config-json {params.cfg:q} --manifest {input.manifest} "
        "--tokenizer {input.tokenizer} --out $(dirname {output.metrics}) > {log} 2>&1"
