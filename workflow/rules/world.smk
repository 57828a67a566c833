rule world:
    """Write the synthetic MM1 world as real-format datasets, benchmarks and SFT data, with a manifest."""
    output:
        captions=directory("results/world/captions"),
        interleaved=directory("results/world/interleaved"),
        text=directory("results/world/text"),
        benchmarks=directory("results/world/benchmarks"),
        sft=directory("results/world/sft"),
        samples="results/world/samples.png",
        manifest="results/world/manifest.parquet",
        provenance="results/world/provenance.json",
    params:
        cfg=stage_config("world"),
    log:
        "logs/world.log",
    benchmark:
        "benchmarks/world.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 world --config-json {params.cfg:q} --out $(dirname {output.manifest}) > {log} 2>&1"
