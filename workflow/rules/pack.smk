rule pack:
    """Draw the run's pre-training sequences from the caption/interleaved/text mixture and pack them."""
    input:
        manifest=manifest,
        tokenizer=up("tokenizer", "tokenizer.json"),
    output:
        packed="results/pack/{exp}/train.parquet",
        mixture="results/pack/{exp}/mixture.csv",
        quarantine="results/pack/{exp}/quarantine.parquet",
        provenance="results/pack/{exp}/provenance.json",
    log:
        "logs/pack/{exp}.log",
    benchmark:
        "benchmarks/pack/{exp}.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: 1
    resources:
        **light(mem_mb=4000),
    params:
        cfg=cfg("pack"),
    shell:
        "mm1 pack --config-json {params.cfg:q} --manifest {input.manifest:q} --tokenizer {input.tokenizer:q} "
        '--out "$(dirname {output.packed:q})" > {log:q} 2>&1'
