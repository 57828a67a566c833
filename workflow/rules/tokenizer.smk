rule tokenizer:
    """Train the BPE tokenizer on the text of the pre-training sources."""
    input:
        manifest=DATA_MANIFEST,
    output:
        tokenizer="results/tokenizer/tokenizer.json",
        provenance="results/tokenizer/provenance.json",
    params:
        cfg=stage_config("tokenizer", "data"),
    log:
        "logs/tokenizer.log",
    benchmark:
        "benchmarks/tokenizer.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 tokenizer --config-json {params.cfg:q} --manifest {input.manifest} "
        "--out $(dirname {output.tokenizer}) > {log} 2>&1"
