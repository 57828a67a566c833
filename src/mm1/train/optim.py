"""megatron-core's DDP wrapper, optimizer and LR/WD scheduler, built from TrainConfig."""

from __future__ import annotations

import warnings

import torch

from mm1.config import TrainConfig

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler


def wrap_ddp(model: torch.nn.Module) -> DistributedDataParallel:
    """Data-parallel gradient reduction; per-token loss means no 1/dp scaling here."""
    config = model.config
    config.calculate_per_token_loss = True
    ddp = DistributedDataParallel(
        config=config,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=False, overlap_grad_reduce=False, use_distributed_optimizer=False
        ),
        module=model,
    )
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = ddp.no_sync
    return ddp


def build_optimizer(model: DistributedDataParallel, cfg: TrainConfig, lr: float, weight_decay: float):
    """AdamW (torch's, through megatron's FP32 optimizer) + a warm-up/decay scheduler.

    ``lr`` and ``weight_decay`` are the resolved values (:func:`mm1.models.size.optimizer_hparams`:
    the config's, or MM1's law where the config leaves them None).
    """
    opt_cfg = OptimizerConfig(
        optimizer="adam",
        lr=lr,
        min_lr=lr * cfg.min_lr_ratio,
        weight_decay=weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        clip_grad=cfg.clip_grad,
        bf16=False,
        fp16=False,
        params_dtype=torch.float32,
        use_distributed_optimizer=False,
    )
    optimizer = get_megatron_optimizer(opt_cfg, [model])
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
