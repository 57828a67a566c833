rule tokenizer:
    """Train the BPE tokenizer on the text of the pre-training sources."""
    input:
        manifest=manifest,
    output:
        tokenizer="results/tokenizer/{exp}/tokenizer.json",
        provenance="results/tokenizer/{exp}/provenance.json",
    log:
        "logs/tokenizer/{exp}.log",
    benchmark:
        "benchmarks/tokenizer/{exp}.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: 1
    resources:
        **light(),
    params:
        cfg=cfg("tokenizer"),
    shell:
        "mm1 tokenizer --config-json {params.cfg:q} --manifest {input.manifest:q} "
        '--out "$(dirname {output.tokenizer:q})" > {log:q} 2>&1'
