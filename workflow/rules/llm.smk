# The text-only LLM stage: the miniature stand-in for MM1's pre-trained LLM (a real run imports HF
# weights instead, mm1.models.hf). Its two differences from the multimodal stages are overrides
# here, after the run's config: text-only sequences, and only the decoder trains.
LLM_DATA = "--set data.mixture.caption=0 --set data.mixture.interleaved=0 --set data.mixture.text=1"


rule llm_pack:
    """Text-only pre-training sequences (the text source of the mixture alone)."""
    input:
        manifest=DATA_MANIFEST,
        tokenizer="results/tokenizer/tokenizer.json",
    output:
        packed="results/llm_packed/train.parquet",
        mixture="results/llm_packed/mixture.csv",
        quarantine="results/llm_packed/quarantine.parquet",
        provenance="results/llm_packed/provenance.json",
    params:
        cfg=stage_config("data", "model", "train"),
        text_only=LLM_DATA,
    log:
        "logs/llm_pack.log",
    benchmark:
        "benchmarks/llm_pack.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 pack --config-json {params.cfg:q} {params.text_only} --manifest {input.manifest} "
        "--tokenizer {input.tokenizer} --out $(dirname {output.packed}) > {log} 2>&1"


rule llm:
    """Text-only pre-training of the decoder (encoder and connector frozen); `mm1 train --init-decoder`
    starts a multimodal run from it."""
    input:
        packed="results/llm_packed/train.parquet",
        tokenizer="results/tokenizer/tokenizer.json",
    output:
        checkpoint=directory("results/llm/checkpoint"),
        metrics="results/llm/metrics.csv",
        provenance="results/llm/provenance.json",
    params:
        cfg=stage_config("model", "parallel", "train"),
        decoder_only="--set 'train.freeze=[encoder,connector]'",
    threads: workflow.cores
    resources:
        mem_mb=4000,
    log:
        "logs/llm.log",
    benchmark:
        "benchmarks/llm.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 train --config-json {params.cfg:q} {params.decoder_only} --packed {input.packed} "
        "--tokenizer {input.tokenizer} --out $(dirname {output.metrics}) > {log} 2>&1"
