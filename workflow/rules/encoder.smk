rule encoder:
    """Image-encoder pre-training with the CLIP or AIM head (model.encoder.objective; MM1 Table 1)."""
    input:
        manifest=manifest,
        tokenizer=up("tokenizer", "tokenizer.json"),
    output:
        checkpoint=directory("results/encoder/{exp}/checkpoint"),
        metrics="results/encoder/{exp}/metrics.csv",
        summary="results/encoder/{exp}/metrics.json",
        figure="results/encoder/{exp}/encoder.png",
        provenance="results/encoder/{exp}/provenance.json",
    log:
        "logs/encoder/{exp}.log",
    benchmark:
        "benchmarks/encoder/{exp}.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: job_threads
    resources:
        **training("encoder"),
    params:
        cfg=cfg("encoder"),
    shell:
        "mm1 encoder --config-json {params.cfg:q} --manifest {input.manifest:q} "
        '--tokenizer {input.tokenizer:q} --out "$(dirname {output.metrics:q})" > {log:q} 2>&1'
