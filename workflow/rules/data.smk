rule data:
    """Render the synthetic MM1 world: train/test image-caption pairs."""
    output:
        train="results/data/train.parquet",
        test="results/data/test.parquet",
        samples="results/data/samples.png",
        provenance="results/data/provenance.json",
    params:
        cfg=stage_config("world"),
    log:
        "logs/data.log",
    benchmark:
        "benchmarks/data.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 data --config-json {params.cfg:q} --out $(dirname {output.train}) > {log} 2>&1"
