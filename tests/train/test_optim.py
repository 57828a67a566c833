"""Optimizer setup, single process: freezing, the distributed optimizer, bf16 mixed precision.

Each test builds the trainer's model (``trainer.build``) for a tiny config in a one-process group
and runs optimizer steps through megatron's schedule, DDP wrapper and optimizer.
"""

from __future__ import annotations

import types
import warnings

import pytest
import torch

from mm1.config import RunConfig, load
from mm1.parallel.setup import distributed
from mm1.train.optim import build_optimizer, freeze, use_bf16, wrap_ddp
from mm1.train.trainer import build
from tinykit import MICRO

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.pipeline_parallel import get_forward_backward_func

TINY = [
    *MICRO,
    "train.steps=4",
    "train.warmup_steps=0",  # the first step already moves the weights
]
TOK = types.SimpleNamespace(vocab_size=50, image_id=3)
PARTS = {"encoder": "encoder.", "connector": "connector.", "decoder": "language_model."}


def config(*overrides: str) -> RunConfig:
    return load(None, [*TINY, *overrides])


def batch() -> dict[str, torch.Tensor]:
    """Two sequences with one image each."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(TOK.image_id + 1, TOK.vocab_size, (2, 24), generator=g)
    tokens[:, 2:6] = TOK.image_id
    return {
        "tokens": tokens,
        "labels": torch.roll(tokens, -1, dims=1),
        "loss_mask": (tokens != TOK.image_id).float(),
        "images": torch.randn(2, 3, 16, 16, generator=g),
    }


def _forward_step(data_iterator, model):
    b = next(data_iterator)

    def loss_func(per_token: torch.Tensor):
        total = (per_token.float() * b["loss_mask"]).sum()
        count = b["loss_mask"].sum()
        return total, count.to(torch.int), {"lm loss": torch.stack([total.detach(), count])}

    return model(b["tokens"], b["images"], b["labels"]), loss_func


def weights(model) -> dict[str, torch.Tensor]:
    """fp32 copies of the parameters under the MM1Model's names (bf16 runs wrap it in a Float16Module)."""
    return {k.removeprefix("module."): v.detach().float().clone() for k, v in model.module.named_parameters()}


def train(cfg: RunConfig, steps: int) -> tuple[list[float], dict[str, torch.Tensor], dict[str, torch.Tensor], object]:
    """(losses, weights before, weights after, the megatron optimizer) of ``steps`` steps on one batch."""
    with distributed(cfg.parallel, cfg.train.seed):
        model = wrap_ddp(build(cfg, TOK), cfg.parallel)
        optimizer, scheduler = build_optimizer(model, cfg.train, lr=1e-3, weight_decay=0.01, lr_mult=cfg.train.lr_mult)
        before = weights(model)
        losses = []
        for _ in range(steps):
            model.zero_grad_buffer()
            optimizer.zero_grad()
            reports = get_forward_backward_func()(
                forward_step_func=_forward_step,
                data_iterator=iter([batch()]),
                model=[model],
                num_microbatches=1,
                seq_length=24,
                micro_batch_size=2,
                forward_only=False,
            )
            optimizer.step()
            scheduler.step(increment=1)
            total, count = reports[0]["lm loss"].tolist()
            losses.append(total / count)
        after = weights(model)
    return losses, before, after, optimizer


def test_precision_auto_is_fp32_on_cpu_and_bf16_on_gpu() -> None:
    assert use_bf16("auto") is torch.cuda.is_available()
    assert use_bf16("fp32") is False and use_bf16("bf16") is True


@pytest.mark.parametrize("parts", [["encoder"], ["connector"], ["decoder"], ["encoder", "connector"]])
def test_frozen_parts_do_not_change_the_others_do(parts: list[str]) -> None:
    sets = ",".join(parts)
    _, before, after, _ = train(config(f"train.freeze=[{sets}]"), steps=1)
    frozen = tuple(PARTS[p] for p in parts)
    for name, old in before.items():
        if name.startswith(frozen):
            assert torch.equal(after[name], old), f"frozen {name} changed"
        else:
            assert not torch.equal(after[name], old), f"{name} did not train"


def test_freezing_everything_or_an_unknown_part_is_an_error() -> None:
    with pytest.raises(ValueError, match="leaves nothing to train"):
        freeze(torch.nn.Module(), ["encoder", "connector", "decoder"])
    with pytest.raises(ValueError, match="unknown part 'vision'"):
        freeze(torch.nn.Module(), ["vision"])


def test_lr_mult_scales_one_parts_updates_and_leaves_the_others() -> None:
    # Adam's first update is lr x (m / sqrt(v)) plus the decay lr x wd x w: linear in the LR, so the
    # encoder moves 0.1 x as far as with the run's LR and every other weight moves exactly as far.
    _, before, plain, _ = train(config(), steps=1)
    _, _, scaled, optimizer = train(config("train.lr_mult={encoder: 0.1}"), steps=1)
    moved = 0
    for name, old in before.items():
        if name.startswith(PARTS["encoder"]):
            torch.testing.assert_close(scaled[name] - old, 0.1 * (plain[name] - old), rtol=1e-3, atol=1e-9, msg=name)
            moved += int(not torch.equal(scaled[name], old))
        else:
            assert torch.equal(scaled[name], plain[name]), f"{name} is not in the scaled part but moved differently"
    assert moved > 0
    lrs = sorted({g["max_lr"] for o in optimizer.chained_optimizers for g in o.param_groups})
    assert lrs == pytest.approx([1e-4, 1e-3])


def test_lr_mult_must_be_positive_and_name_a_part() -> None:
    with pytest.raises(ValueError, match="lr_mult"):
        config("train.lr_mult={encoder: 0}")
    with pytest.raises(ValueError, match="lr_mult"):
        config("train.lr_mult={vision: 0.1}")


def test_distributed_optimizer_on_one_rank_trains_like_the_plain_one() -> None:
    plain, _, plain_w, plain_opt = train(config(), steps=3)
    dist, _, dist_w, dist_opt = train(config("parallel.distributed_optimizer=true"), steps=3)
    assert "DistributedOptimizer" in {type(o).__name__ for o in dist_opt.chained_optimizers}
    assert "DistributedOptimizer" not in {type(o).__name__ for o in plain_opt.chained_optimizers}
    assert plain == pytest.approx(dist, rel=1e-6)
    for name, w in plain_w.items():
        torch.testing.assert_close(dist_w[name], w, rtol=0, atol=1e-6, msg=name)


def test_bf16_trains_with_fp32_main_weights_close_to_fp32() -> None:
    fp32, _, _, _ = train(config("train.precision=fp32"), steps=3)
    bf16, _, weights, optimizer = train(config("train.precision=bf16"), steps=3)
    inner = optimizer.chained_optimizers[0]
    assert type(inner).__name__ == "Float16OptimizerWithFloat16Params"
    main = [p for group in inner.fp32_from_float16_groups for p in group]
    assert main and all(p.dtype == torch.float32 for p in main)
    # the loss of bf16 weights and activations vs fp32: bf16 has 8 significant bits (~4e-3 relative)
    assert bf16 == pytest.approx(fp32, rel=1e-2)
    assert bf16[-1] < bf16[0]
