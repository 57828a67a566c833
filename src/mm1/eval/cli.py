"""``mm1 eval run | score-captions | score-vqa``: the evaluation commands of :mod:`mm1.cli`."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from mm1.cli_errors import UsageError
from mm1.config import ParallelConfig


def eval_parallel(ckpt: Path, micro_batch_size: int, max_images: int) -> ParallelConfig:
    """The evaluation's layout: as many processes as a launcher started (torchrun, srun), else one
    per GPU this process sees (one on CPU); on GPUs the smallest tensor parallelism whose decoding
    fits the device (:func:`mm1.plan.infer.inference_tp`, the planner's rule), the rest data-parallel."""
    import torch

    from mm1.parallel.launch import under_launcher

    if under_launcher():
        world = int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    else:
        world = torch.cuda.device_count() if torch.cuda.is_available() else 1
    tp = 1
    if torch.cuda.is_available() and world > 1:
        from mm1.plan.infer import inference_tp
        from mm1.train import checkpoint

        meta = checkpoint.read_meta(ckpt)
        memory = torch.cuda.get_device_properties(0).total_memory / 1e9
        tp = inference_tp(meta["model"], meta["vocab_size"], memory, world, micro_batch_size, max_images)
    return ParallelConfig(world_size=world, tp=tp)


def _cmd_eval(args: argparse.Namespace) -> int:
    from mm1.eval.harness import evaluate
    from mm1.parallel.launch import relaunch_if_needed

    cfg = args.resolve(args)
    parallel = eval_parallel(args.checkpoint, cfg.eval.micro_batch_size, cfg.eval.max_images)
    code = relaunch_if_needed(parallel, args.argv, out=args.out)  # one process per GPU, under torchrun
    if code is not None:
        return code
    result = evaluate(cfg.eval, cfg.name, args.data, args.tokenizer, args.checkpoint, args.out,
                      sft=cfg.sft if args.sft else None, parallel=parallel)  # fmt: skip
    if os.environ.get("RANK", "0") == "0":
        print(result.summary)
    return 0


def _brief(scores: dict, per_item: bool) -> dict:
    """The scores without the per-image / per-question lists unless asked for."""
    return scores if per_item else {k: v for k, v in scores.items() if k not in ("per_image", "per_question")}


def _cmd_score_captions(args: argparse.Namespace) -> int:
    from mm1.eval.scoring import score_captions, score_official

    if args.format == "coco":
        scores = score_captions(args.pred, args.refs)
    else:
        scores = score_official(args.pred, args.format, args.refs)
    print(json.dumps(_brief(scores, args.per_item), indent=2))
    return 0


def _cmd_score_vqa(args: argparse.Namespace) -> int:
    from mm1.eval.scoring import score_official, score_vqa

    if args.format == "vqav2":
        if args.annotations is None:
            raise UsageError("score-vqa --format vqav2 needs --annotations (the VQAv2 annotations JSON)")
        scores = score_vqa(args.pred, args.questions, args.annotations)
    elif args.annotations is not None:
        raise UsageError(f"score-vqa --format {args.format}: the answers are in --questions; drop --annotations")
    else:
        scores = score_official(args.pred, args.format, args.questions)
    print(json.dumps(_brief(scores, args.per_item), indent=2))
    return 0


HELP = "evaluate a checkpoint on the benchmarks, or score prediction files"


def add_subcommands(ev: argparse.ArgumentParser, config_args: Callable, resolve: Callable) -> None:
    """``mm1 eval``'s subcommands: ``config_args`` adds the config flags, ``resolve`` turns them into a RunConfig."""
    cmds = ev.add_subparsers(dest="eval_command", required=True)
    run = cmds.add_parser(
        "run", help="few-shot captioning/VQA + TextCore (pre-trained) or 0-shot + multiple choice (--sft)"
    )
    config_args(run)
    run.add_argument(
        "--data", type=Path, required=True, help="folder relative benchmark paths start from (the world stage's)"
    )
    run.add_argument("--tokenizer", type=Path, required=True, help="tokenizer.json")
    run.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder of a train or sft stage")
    run.add_argument("--out", type=Path, required=True, help="output folder")
    run.add_argument(
        "--sft", action="store_true", help="an instruction-tuned checkpoint: 0-shot with the sft chat template"
    )
    run.set_defaults(func=_cmd_eval, resolve=resolve)
    sc = cmds.add_parser("score-captions", help="CIDEr-D of [{image_id, caption}] against a captions val file")
    sc.add_argument("--pred", type=Path, required=True, help='predictions: [{"image_id": int, "caption": str}]')
    sc.add_argument("--refs", type=Path, required=True, help="the val file with the references (see --format)")
    sc.add_argument("--format", choices=("coco", "textcaps", "nocaps"), default="coco",
                    help="coco: a COCO captions JSON (default); textcaps / nocaps: their official val files "
                         "(nocaps: also CIDEr per domain)")  # fmt: skip
    sc.add_argument("--per-item", action="store_true", help="also print every image's score")
    sc.set_defaults(func=_cmd_score_captions)
    sv = cmds.add_parser("score-vqa", help="VQA accuracy (GQA: exact match) of [{question_id, answer}]")
    sv.add_argument("--pred", type=Path, required=True, help='predictions: [{"question_id": int, "answer": str}]')
    sv.add_argument("--questions", type=Path, required=True, help="the questions val file (see --format)")
    sv.add_argument("--annotations", type=Path, help="VQAv2 annotations JSON (--format vqav2 only)")
    sv.add_argument("--format", choices=("vqav2", "textvqa", "vizwiz", "gqa"), default="vqav2",
                    help="vqav2: questions + annotations JSONs (default); textvqa / vizwiz / gqa: their "
                         "official val file, answers included")  # fmt: skip
    sv.add_argument("--per-item", action="store_true", help="also print every question's score")
    sv.set_defaults(func=_cmd_score_vqa)
