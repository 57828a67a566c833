# The text-only LLM stage: the miniature stand-in for MM1's pre-trained LLM (a real run imports HF
# weights instead, mm1.models.hf). Its differences from the multimodal stages are the stage
# overrides in config/study.yaml (study.stages.llm_pack, study.stages.llm): text-only sequences,
# and only the decoder trains.


rule llm_pack:
    """Text-only pre-training sequences (the text source of the mixture alone)."""
    input:
        manifest=manifest,
        tokenizer=up("tokenizer", "tokenizer.json"),
    output:
        packed="results/llm_pack/{exp}/train.parquet",
        mixture="results/llm_pack/{exp}/mixture.csv",
        quarantine="results/llm_pack/{exp}/quarantine.parquet",
        provenance="results/llm_pack/{exp}/provenance.json",
    log:
        "logs/llm_pack/{exp}.log",
    benchmark:
        "benchmarks/llm_pack/{exp}.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: 1
    resources:
        **light(mem_mb=4000),
    params:
        cfg=cfg("llm_pack"),
    shell:
        "mm1 pack --config-json {params.cfg:q} --manifest {input.manifest:q} "
        '--tokenizer {input.tokenizer:q} --out "$(dirname {output.packed:q})" > {log:q} 2>&1'


rule llm:
    """Text-only pre-training of the decoder; multimodal pre-training starts from it (--init-decoder)."""
    input:
        packed=up("llm_pack", "train.parquet"),
        tokenizer=up("tokenizer", "tokenizer.json"),
    output:
        checkpoint=directory("results/llm/{exp}/checkpoint"),
        metrics="results/llm/{exp}/metrics.csv",
        provenance="results/llm/{exp}/provenance.json",
    log:
        "logs/llm/{exp}.log",
    benchmark:
        "benchmarks/llm/{exp}.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: job_threads
    resources:
        **training("llm"),
    params:
        cfg=cfg("llm"),
    shell:
        "mm1 train --config-json {params.cfg:q} --packed {input.packed:q} "
        '--tokenizer {input.tokenizer:q} --out "$(dirname {output.metrics:q})" > {log:q} 2>&1'
