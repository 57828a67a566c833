rule tokenizer:
    """Train the BPE tokenizer on the training captions."""
    input:
        pairs="results/data/train.parquet",
    output:
        tokenizer="results/tokenizer/tokenizer.json",
        provenance="results/tokenizer/provenance.json",
    params:
        cfg=stage_config("tokenizer"),
    log:
        "logs/tokenizer.log",
    benchmark:
        "benchmarks/tokenizer.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 tokenizer --config-json {params.cfg:q} --pairs {input.pairs} "
        "--out $(dirname {output.tokenizer}) > {log} 2>&1"
