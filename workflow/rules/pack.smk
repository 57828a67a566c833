rule pack:
    """Draw the run's pre-training sequences from the caption/interleaved/text mixture and pack them."""
    input:
        manifest=DATA_MANIFEST,
        tokenizer="results/tokenizer/tokenizer.json",
    output:
        packed="results/packed/train.parquet",
        mixture="results/packed/mixture.csv",
        quarantine="results/packed/quarantine.parquet",
        provenance="results/packed/provenance.json",
    params:
        cfg=stage_config("data", "model", "train"),
    log:
        "logs/pack.log",
    benchmark:
        "benchmarks/pack.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 pack --config-json {params.cfg:q} --manifest {input.manifest} --tokenizer {input.tokenizer} "
        "--out $(dirname {output.packed}) > {log} 2>&1"
