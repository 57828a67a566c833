rule eval:
    """Few-shot (eval.shots) captioning and VQA on every benchmark of eval.benchmarks, and TextCore."""
    input:
        benchmarks=up("world", "benchmarks"),
        tokenizer=up("tokenizer", "tokenizer.json"),
        checkpoint=up("train", "checkpoint"),
    output:
        predictions=directory("results/eval/{exp}/predictions"),
        scores="results/eval/{exp}/scores.csv",
        summary="results/eval/{exp}/summary.csv",
        metrics="results/eval/{exp}/metrics.json",
        provenance="results/eval/{exp}/provenance.json",
    log:
        "logs/eval/{exp}.log",
    benchmark:
        "benchmarks/eval/{exp}.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: job_threads
    resources:
        **light(mem_mb=4000, runtime=60),
    params:
        cfg=cfg("eval"),
    shell:
        'mm1 eval run --config-json {params.cfg:q} --data "$(dirname {input.benchmarks:q})" '
        "--tokenizer {input.tokenizer:q} --checkpoint {input.checkpoint:q} "
        '--out "$(dirname {output.scores:q})" > {log:q} 2>&1'


rule sft_eval:
    """The SFT checkpoint 0-shot on every benchmark, in the sft chat template, and multiple choice."""
    input:
        benchmarks=up("world", "benchmarks"),
        sft=up("world", "sft"),
        tokenizer=up("tokenizer", "tokenizer.json"),
        checkpoint=up("sft", "checkpoint"),
    output:
        predictions=directory("results/sft_eval/{exp}/predictions"),
        scores="results/sft_eval/{exp}/scores.csv",
        summary="results/sft_eval/{exp}/summary.csv",
        metrics="results/sft_eval/{exp}/metrics.json",
        provenance="results/sft_eval/{exp}/provenance.json",
    log:
        "logs/sft_eval/{exp}.log",
    benchmark:
        "benchmarks/sft_eval/{exp}.tsv"
    conda:
        "../../envs/mm1.yaml"
    threads: job_threads
    resources:
        **light(mem_mb=4000, runtime=60),
    params:
        cfg=cfg("sft_eval"),
    shell:
        'mm1 eval run --sft --config-json {params.cfg:q} --data "$(dirname {input.benchmarks:q})" '
        "--tokenizer {input.tokenizer:q} --checkpoint {input.checkpoint:q} "
        '--out "$(dirname {output.scores:q})" > {log:q} 2>&1'
