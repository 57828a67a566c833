"""Weight decay by MM1's convention: one optimizer step shrinks every weight matrix by lambda x s(t).

MM1 trained with AXLearn's decoupled AdamW (Loshchilov & Hutter, Algorithm 2): lambda = 0.1 x peak
LR, multiplied by the schedule s(t) = lr(t) / peak LR but not by the peak LR again. Each test
builds the optimizer as the trainers do, moves its scheduler to step t, and takes one step with
zero gradients, so Adam's update is zero and only the decay moves the weights: after = before x
(1 - shrink), shrink hand-computed from lambda and the warm-up/cosine formula written out here.
"""

from __future__ import annotations

import math
import types

import pytest
import torch

from mm1.config import RunConfig, load
from mm1.models.size import decoder_params, encoder_params, optimizer_hparams, peak_lr
from mm1.parallel.setup import distributed
from mm1.train.encoder_trainer import _hparams, build_encoder_model
from mm1.train.optim import build_optimizer, wrap_ddp
from mm1.train.trainer import build
from tinykit import MICRO

TOK = types.SimpleNamespace(vocab_size=50, image_id=3)
TINY = [
    *MICRO,
    "model.encoder.clip.text_seq_length=8",
    "train.steps=10",
    "train.warmup_steps=2",
    "train.lr_decay=cosine",
    "train.min_lr_ratio=0.1",
]


def schedule(t: int) -> float:
    """s(t) of TINY written out: linear warm-up over 2 steps, then cosine from 1 to 0.1 at step 10."""
    if t <= 2:
        return t / 2
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (t - 2) / (10 - 2)))


def step_with_zero_grads(model, cfg: RunConfig, lr: float, wd: float, t: int) -> dict[str, tuple]:
    """{name: (before, after)} of the trainable parameters around one optimizer step at schedule step t."""
    model = wrap_ddp(model, cfg.parallel)
    optimizer, scheduler = build_optimizer(model, cfg.train, lr, wd)
    if t:
        scheduler.step(increment=t)  # the trainers step the scheduler once after each optimizer step
    before = {n: p.detach().double().clone() for n, p in model.module.named_parameters() if p.requires_grad}
    model.zero_grad_buffer()
    optimizer.zero_grad()
    optimizer.step()
    return {n: (before[n], p.detach().double()) for n, p in model.module.named_parameters() if n in before}


def check_shrink(moved: dict[str, tuple], shrink: float) -> None:
    """Weight matrices shrink by ``shrink``; biases and norm weights (not decayed) stay."""
    matrices = 0
    for name, (before, after) in moved.items():
        if before.ndim >= 2:
            matrices += 1
            torch.testing.assert_close(after, before * (1 - shrink), rtol=1e-6, atol=0, msg=name)
        elif before.ndim == 1:
            assert torch.equal(after, before), f"{name} is not decayed but moved"
    assert matrices >= 8


def test_the_law_shrinks_decoder_weights_by_lambda_times_the_cosine_schedule() -> None:
    cfg = load(None, TINY)
    n = decoder_params(cfg.model.decoder, cfg.model.moe, TOK.vocab_size).active
    lam = 0.1 * peak_lr(n)  # MM1: lambda = 0.1 x peak LR
    assert schedule(6) == pytest.approx(0.55)  # half-way through the cosine: 0.1 + 0.9 / 2
    with distributed(cfg.parallel, cfg.train.seed):
        lr, wd = optimizer_hparams(cfg, vocab_size=TOK.vocab_size)  # as the trainer resolves them
        moved = step_with_zero_grads(build(cfg, TOK), cfg, lr, wd, t=6)
    check_shrink(moved, lam * schedule(6))


def test_an_explicit_lr_takes_lambda_as_a_tenth_of_it_also_in_warm_up() -> None:
    cfg = load(None, [*TINY, "train.lr=0.02"])
    with distributed(cfg.parallel, cfg.train.seed):
        moved = step_with_zero_grads(build(cfg, TOK), cfg, *optimizer_hparams(cfg, vocab_size=TOK.vocab_size), t=1)
    check_shrink(moved, 0.1 * 0.02 * 0.5)  # lambda 2e-3, half-way through warm-up: 1e-3


def test_an_explicit_weight_decay_has_torchs_meaning() -> None:
    cfg = load(None, [*TINY, "train.lr=0.02", "train.weight_decay=0.05"])
    with distributed(cfg.parallel, cfg.train.seed):
        moved = step_with_zero_grads(build(cfg, TOK), cfg, *optimizer_hparams(cfg, vocab_size=TOK.vocab_size), t=6)
    check_shrink(moved, 0.05 * 0.02 * 0.55)  # weight_decay x lr(t) = 5.5e-4


@pytest.mark.parametrize("objective", ["clip", "aim"])
def test_encoder_pretraining_uses_the_same_rule(objective: str) -> None:
    cfg = load(None, [*TINY, f"model.encoder.objective={objective}"])
    lam = 0.1 * peak_lr(encoder_params(cfg.model.encoder).total)  # the law on the encoder's count
    with distributed(cfg.parallel, cfg.train.seed):
        lr, wd = _hparams(cfg)  # as train_encoder resolves them
        moved = step_with_zero_grads(build_encoder_model(cfg, TOK.vocab_size), cfg, lr, wd, t=6)
    check_shrink(moved, lam * schedule(6))
