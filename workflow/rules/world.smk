rule world:
    """Write the synthetic MM1 world as real-format datasets, benchmarks and SFT data, with a manifest."""
    output:
        captions=directory("results/world/{exp}/captions"),
        interleaved=directory("results/world/{exp}/interleaved"),
        text=directory("results/world/{exp}/text"),
        benchmarks=directory("results/world/{exp}/benchmarks"),
        sft=directory("results/world/{exp}/sft"),
        samples="results/world/{exp}/samples.png",
        manifest="results/world/{exp}/manifest.parquet",
        provenance="results/world/{exp}/provenance.json",
    log:
        "logs/world/{exp}.log",
    benchmark:
        "benchmarks/world/{exp}.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: 1
    resources:
        **light(),
    params:
        cfg=cfg("world"),
    shell:
        'mm1 world --config-json {params.cfg:q} --out "$(dirname {output.manifest:q})" > {log:q} 2>&1'
