# The study's stages, one rule each, as the stage registry (mm1.stages) declares them: its inputs
# (upstream runs of this experiment, mm1.study), its outputs under results/<stage>/{exp}/, and the
# mm1 command that runs it with the config sections it reads (--config-json); what each stage does is
# its `help` there. On a GPU cluster (config gpu=...) the planner sizes every job: training and
# evaluation from their parallel layouts, data jobs from their data (stage_resources); locally the
# data jobs run on one core.
for _stage in STAGES.values():

    rule:
        name:
            _stage.name
        input:
            unpack(stage_inputs(_stage.name)),
        output:
            **stage_outputs(_stage.name),
        log:
            f"logs/{_stage.name}/{{exp}}.log",
        benchmark:
            f"benchmarks/{_stage.name}/{{exp}}.tsv"
        conda:
            "../../envs/mm1.yaml"
        threads: job_threads if _stage.multicore else 1
        resources:
            **stage_resources(_stage.name),
        params:
            command=list(_stage.command),
            cfg=cfg(_stage.name),
            args=stage_args(_stage.name),
            out=lambda w, stage=_stage.name: run_dir(stage, w.exp),
        shell:
            "mm1 {params.command:q} --config-json {params.cfg:q} {params.args:q} --out {params.out:q} > {log:q} 2>&1"
