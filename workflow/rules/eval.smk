rule eval:
    """0-shot captioning of the COCO-like benchmark's held-out images, scored with CIDEr-D."""
    input:
        benchmarks="results/world/benchmarks",
        tokenizer="results/tokenizer/tokenizer.json",
        checkpoint="results/train/checkpoint",
    output:
        scores="results/eval/scores.csv",
        metrics="results/eval/metrics.json",
        captions="results/eval/captions.jsonl",
        provenance="results/eval/provenance.json",
    params:
        cfg=stage_config("name", "eval"),
    log:
        "logs/eval.log",
    benchmark:
        "benchmarks/eval.tsv"
    conda:
        "../../envs/mm1.yaml"
    shell:
        "mm1 eval --config-json {params.cfg:q} --benchmark {input.benchmarks}/coco/captions_val.json "
        "--tokenizer {input.tokenizer} "
        "--checkpoint {input.checkpoint} --out $(dirname {output.scores}) > {log} 2>&1"
