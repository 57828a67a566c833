rule sft_pack:
    """Instruction conversations -> SFT sequences (loss on answers; sft.image_grid splits pictures)."""
    input:
        manifest=DATA_MANIFEST,
        tokenizer="results/tokenizer/tokenizer.json",
    output:
        packed="results/sft_packed/train.parquet",
        quarantine="results/sft_packed/quarantine.parquet",
        provenance="results/sft_packed/provenance.json",
    params:
        cfg=stage_config("data", "model", "sft"),
    log:
        "logs/sft_pack.log",
    benchmark:
        "benchmarks/sft_pack.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 sft-pack --config-json {params.cfg:q} --manifest {input.manifest} --tokenizer {input.tokenizer} "
        "--out $(dirname {output.packed}) > {log} 2>&1"


rule sft:
    """Supervised fine-tuning of the pre-trained model (the trainer, started from its checkpoint)."""
    input:
        packed="results/sft_packed/train.parquet",
        tokenizer="results/tokenizer/tokenizer.json",
        pretrained="results/train/checkpoint",
    output:
        checkpoint=directory("results/sft/checkpoint"),
        metrics="results/sft/metrics.csv",
        provenance="results/sft/provenance.json",
    params:
        cfg=stage_config("model", "parallel", "train"),
    threads: workflow.cores
    resources:
        mem_mb=4000,
    log:
        "logs/sft.log",
    benchmark:
        "benchmarks/sft.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 train --config-json {params.cfg:q} --packed {input.packed} --tokenizer {input.tokenizer} "
        "--init {input.pretrained} --out $(dirname {output.metrics}) > {log} 2>&1"
