rule train:
    """Multimodal pre-training (megatron-core) from the LLM and encoder stages; parallel.world_size processes."""
    input:
        unpack(pretrained),
        packed=up("pack", "train.parquet"),
        tokenizer=up("tokenizer", "tokenizer.json"),
    output:
        checkpoint=directory("results/train/{exp}/checkpoint"),
        metrics="results/train/{exp}/metrics.csv",
        provenance="results/train/{exp}/provenance.json",
    log:
        "logs/train/{exp}.log",
    benchmark:
        "benchmarks/train/{exp}.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: job_threads
    resources:
        **training("train"),
    params:
        cfg=cfg("train"),
        init=lambda w: [arg for k, v in pretrained(w).items() for arg in (INIT_FLAG[k], v)],
    shell:
        "mm1 train --config-json {params.cfg:q} {params.init:q} --packed {input.packed:q} "
        '--tokenizer {input.tokenizer:q} --out "$(dirname {output.metrics:q})" > {log:q} 2>&1'
