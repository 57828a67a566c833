rule train:
    """Multimodal pre-training (megatron-core); parallel.world_size processes via torchrun."""
    input:
        packed="results/packed/train.parquet",
        tokenizer="results/tokenizer/tokenizer.json",
    output:
        checkpoint=directory("results/train/checkpoint"),
        metrics="results/train/metrics.csv",
        provenance="results/train/provenance.json",
    params:
        cfg=stage_config("model", "parallel", "train"),
    threads: workflow.cores
    resources:
        mem_mb=4000,
    log:
        "logs/train.log",
    benchmark:
        "benchmarks/train.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 train --config-json {params.cfg:q} --packed {input.packed} "
        "--tokenizer {input.tokenizer} --out $(dirname {output.metrics}) > {log} 2>&1"
