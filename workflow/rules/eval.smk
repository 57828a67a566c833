rule eval:
    """Few-shot (eval.shots) captioning and VQA on every benchmark of eval.benchmarks, and TextCore."""
    input:
        benchmarks="results/world/benchmarks",
        tokenizer="results/tokenizer/tokenizer.json",
        checkpoint="results/train/checkpoint",
    output:
        predictions=directory("results/eval/predictions"),
        scores="results/eval/scores.csv",
        summary="results/eval/summary.csv",
        metrics="results/eval/metrics.json",
        provenance="results/eval/provenance.json",
    params:
        cfg=stage_config("name", "eval", "sft"),
    log:
        "logs/eval.log",
    benchmark:
        "benchmarks/eval.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 eval run --config-json {params.cfg:q} --data $(dirname {input.benchmarks}) "
        "--tokenizer {input.tokenizer} --checkpoint {input.checkpoint} --out $(dirname {output.scores}) > {log} 2>&1"


rule sft_eval:
    """The SFT checkpoint 0-shot on every benchmark, in the sft chat template, and multiple choice."""
    input:
        benchmarks="results/world/benchmarks",
        sft="results/world/sft",
        tokenizer="results/tokenizer/tokenizer.json",
        checkpoint="results/sft/checkpoint",
    output:
        predictions=directory("results/sft_eval/predictions"),
        scores="results/sft_eval/scores.csv",
        summary="results/sft_eval/summary.csv",
        metrics="results/sft_eval/metrics.json",
        provenance="results/sft_eval/provenance.json",
    params:
        cfg=stage_config("name", "eval", "sft"),
    log:
        "logs/sft_eval.log",
    benchmark:
        "benchmarks/sft_eval.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 eval run --sft --config-json {params.cfg:q} --data $(dirname {input.benchmarks}) "
        "--tokenizer {input.tokenizer} --checkpoint {input.checkpoint} --out $(dirname {output.scores}) > {log} 2>&1"
