rule acquire:
    """Download, verify and read the datasets listed in data.sources (used when data.source=acquired)."""
    output:
        manifest="results/acquired/manifest.parquet",
        quarantine="results/acquired/quarantine.parquet",
    params:
        cfg=stage_config("data"),
    log:
        "logs/acquire.log",
    benchmark:
        "benchmarks/acquire.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 acquire --config-json {params.cfg:q} --out $(dirname {output.manifest}) > {log} 2>&1"
