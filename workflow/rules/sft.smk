rule sft_pack:
    """Instruction conversations -> SFT sequences (loss on answers; sft.image_grid splits pictures)."""
    input:
        manifest=manifest,
        tokenizer=up("tokenizer", "tokenizer.json"),
    output:
        packed="results/sft_pack/{exp}/train.parquet",
        quarantine="results/sft_pack/{exp}/quarantine.parquet",
        provenance="results/sft_pack/{exp}/provenance.json",
    log:
        "logs/sft_pack/{exp}.log",
    benchmark:
        "benchmarks/sft_pack/{exp}.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: 1
    resources:
        **light(mem_mb=4000),
    params:
        cfg=cfg("sft_pack"),
    shell:
        "mm1 sft-pack --config-json {params.cfg:q} --manifest {input.manifest:q} --tokenizer {input.tokenizer:q} "
        '--out "$(dirname {output.packed:q})" > {log:q} 2>&1'


rule sft:
    """Supervised fine-tuning of the pre-trained model (the trainer, started from its checkpoint)."""
    input:
        packed=up("sft_pack", "train.parquet"),
        tokenizer=up("tokenizer", "tokenizer.json"),
        pretrained=up("train", "checkpoint"),
    output:
        checkpoint=directory("results/sft/{exp}/checkpoint"),
        metrics="results/sft/{exp}/metrics.csv",
        provenance="results/sft/{exp}/provenance.json",
    log:
        "logs/sft/{exp}.log",
    benchmark:
        "benchmarks/sft/{exp}.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: job_threads
    resources:
        **training("sft"),
    params:
        cfg=cfg("sft"),
    shell:
        "mm1 train --config-json {params.cfg:q} --packed {input.packed:q} --tokenizer {input.tokenizer:q} "
        '--init {input.pretrained:q} --out "$(dirname {output.metrics:q})" > {log:q} 2>&1'
