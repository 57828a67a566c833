rule acquire:
    """Download, verify and read the datasets listed in data.sources (used when data.source=acquired)."""
    output:
        manifest="results/acquire/{exp}/manifest.parquet",
        quarantine="results/acquire/{exp}/quarantine.parquet",
    log:
        "logs/acquire/{exp}.log",
    benchmark:
        "benchmarks/acquire/{exp}.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: 1
    resources:
        **light(runtime=240),
    params:
        cfg=cfg("acquire"),
    shell:
        'mm1 acquire --config-json {params.cfg:q} --out "$(dirname {output.manifest:q})" > {log:q} 2>&1'
