"""megatron-core's DDP wrapper, optimizer and LR/WD scheduler, built from the run config;
which parts of the model train (``train.freeze``) and in which precision (``train.precision``)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

from mm1.config import ParallelConfig, TrainConfig
from mm1.parallel import compat

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer, get_standard_config_overrides
    from megatron.core.optimizer.optimizer_config import ParamKey, ParamWithNamePredicate
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

# train.freeze names -> the MM1Model attribute holding that part (absent on later pipeline stages)
PARTS = {"encoder": "encoder", "connector": "connector", "decoder": "language_model"}


def use_bf16(precision: str) -> bool:
    """Whether ``train.precision`` means bf16 mixed precision here: auto = bf16 with CUDA, fp32 without.

    bf16 keeps bf16 weights and activations in the model and fp32 main weights, gradients and Adam
    state in the optimizer (megatron's Float16Module + mixed-precision optimizer).
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.precision={precision!r} is not one of auto, fp32, bf16")
    return precision == "bf16" or (precision == "auto" and torch.cuda.is_available())


def freeze(model: torch.nn.Module, parts: Iterable[str]) -> None:
    """Stop training the named parts (``train.freeze``) of an MM1Model chunk: ``requires_grad=False``.

    Call before :func:`wrap_ddp`: megatron's DDP and optimizer only take parameters that require
    gradients. Gradients still flow *through* a frozen part to the parts before it. A part this
    pipeline stage does not hold (the encoder and connector live on the first stage) is skipped.
    """
    parts = set(parts)
    if parts == set(PARTS):
        raise ValueError(f"train.freeze={sorted(parts)} leaves nothing to train; unfreeze at least one part")
    for part in parts:
        if part not in PARTS:
            raise ValueError(f"train.freeze: unknown part {part!r}; choose from {', '.join(PARTS)}")
        module = getattr(model, PARTS[part], None)
        if module is not None:
            module.requires_grad_(False)


def wrap_ddp(model: torch.nn.Module, parallel: ParallelConfig) -> DistributedDataParallel:
    """Data-parallel gradient reduction; per-token loss means no 1/dp scaling here.

    ``parallel.distributed_optimizer`` shards gradients (reduce-scatter) and the optimizer state over
    the data-parallel ranks; :func:`build_optimizer` reads that choice back from the wrapper. In bf16
    (``model.config.bf16``) gradients accumulate and reduce in fp32.
    """
    config = model.config
    config.calculate_per_token_loss = True
    ddp = DistributedDataParallel(
        config=config,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=config.bf16,
            overlap_grad_reduce=False,
            use_distributed_optimizer=parallel.distributed_optimizer,
        ),
        module=model,
    )
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = ddp.no_sync
    return ddp


def _part_lrs(opt_cfg: OptimizerConfig, lr_mult: dict[str, float]) -> dict:
    """megatron's standard param-group overrides (no weight decay on biases and norms) plus one
    group per ``train.lr_mult`` part whose peak and final LR are that multiple of the run's."""
    overrides = get_standard_config_overrides(opt_cfg)
    for part, mult in sorted(lr_mult.items()):
        if mult == 1.0:
            continue
        prefix = f"module.{PARTS[part]}."  # names under the DDP wrapper
        match = ParamWithNamePredicate(name=f"lr_mult_{part}", fn=lambda _p, name, pre=prefix: name.startswith(pre))
        overrides[ParamKey(with_name_predicate=match)] = {"max_lr": opt_cfg.lr * mult, "min_lr": opt_cfg.min_lr * mult}
    return overrides


def _megatron_optimizer(opt_cfg: OptimizerConfig, model: DistributedDataParallel, lr_mult: dict[str, float]):
    with compat.cuda_tensor_types():  # compat patch 8
        return get_megatron_optimizer(opt_cfg, [model], config_overrides=_part_lrs(opt_cfg, lr_mult))


def build_optimizer(
    model: DistributedDataParallel,
    cfg: TrainConfig,
    lr: float,
    weight_decay: float,
    lr_mult: dict[str, float] | None = None,
):
    """AdamW (torch's, through megatron's optimizer) + a warm-up/decay scheduler.

    ``lr`` and ``weight_decay`` are the resolved values (:func:`mm1.models.size.optimizer_hparams`:
    the config's, or MM1's law where the config leaves them None). ``weight_decay`` has torch's
    meaning: each step shrinks every weight matrix by ``weight_decay * lr(t)`` (biases and norms are
    not decayed); the scheduler keeps it constant, so the shrink follows the LR schedule, and
    ``weight_decay=0.1`` is MM1's decoupled lambda = 0.1 x peak LR. Precision and the distributed
    optimizer follow ``model`` (its config's ``bf16``, its DDP config), so the two cannot disagree.
    Frozen parameters (``requires_grad=False``) are left out. ``lr_mult`` (``train.lr_mult``, which the
    multimodal and SFT trainer passes; the encoder stage, whose whole model is the encoder, does not)
    scales a part's peak and final LR; the schedule's shape is the same for every part.
    """
    bf16 = model.config.bf16
    opt_cfg = OptimizerConfig(
        optimizer="adam",
        lr=lr,
        min_lr=lr * cfg.min_lr_ratio,
        weight_decay=weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        clip_grad=cfg.clip_grad,
        bf16=bf16,
        fp16=False,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=model.ddp_config.use_distributed_optimizer,
    )
    optimizer = _megatron_optimizer(opt_cfg, model, lr_mult or {})
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=lr,
        min_lr=lr * cfg.min_lr_ratio,
        lr_warmup_steps=cfg.warmup_steps,
        lr_decay_steps=cfg.steps,
        lr_decay_style=cfg.lr_decay,
        start_wd=weight_decay,
        end_wd=weight_decay,
        wd_incr_steps=cfg.steps,
        wd_incr_style="constant",
    )
    return optimizer, scheduler
