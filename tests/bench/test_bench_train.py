"""The training benchmarks' model building (bench/train_throughput.py, also used by bench/scaling.py)
on a tiny model: the megatron path and the Hugging Face baseline each take two steps on the same
batches. No timing here: the benchmarks measure, this checks that they compare like with like."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"

# A 1-layer ViT of width 16 on 16 px images (4 image tokens), a 2 x 64 decoder over 64 positions.
TINY = [
    "model.encoder.image_size=16",
    "model.encoder.hidden_size=16",
    "model.encoder.num_layers=1",
    "model.encoder.num_attention_heads=2",
    "model.encoder.ffn_hidden_size=32",
    "model.connector.num_tokens=4",
    "model.decoder.hidden_size=64",
    "model.decoder.ffn_hidden_size=128",
    "model.decoder.seq_length=64",
    "train.micro_batch_size=4",
    "train.global_batch_size=4",
]


def _record_mode_depths(depths: list[int]):
    """A forward pre-hook on every module: the depth of the TorchFunctionMode stack at each call."""
    return torch.nn.modules.module.register_module_forward_pre_hook(
        lambda *_: depths.append(len(torch.overrides._get_current_function_mode_stack()))
    )


def test_megatron_and_hf_baseline_train_the_same_model(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    bench = importlib.import_module("train_throughput")
    from mm1.parallel.setup import distributed

    cfg = bench.ablation_config(*TINY)
    batches = bench.synthetic_batches(cfg, images_per_sequence=2, count=2)
    assert [len(b["images"]) for b in batches] == [8, 8]
    with distributed(cfg.parallel, cfg.train.seed) as rank:
        paths = {"megatron": bench.Megatron(cfg, rank), "baseline": bench.Baseline(cfg)}
        losses, tokens, modes = {}, {}, {}
        for name, path in paths.items():
            losses[name], tokens[name], modes[name] = [], [], []
            hook = _record_mode_depths(modes[name])
            try:
                for batch in batches:
                    losses[name].append(path.step(batch))
                    tokens[name].append(path.loss_tokens)
            finally:
                hook.remove()

    megatron, baseline = paths["megatron"].params, paths["baseline"].params
    assert abs(baseline / megatron - 1) < 0.05, (megatron, baseline)
    # no TorchFunctionMode in either path's steps (the compat module installs none any more)
    assert all(modes.values()) and not any(any(v) for v in modes.values()), {k: set(v) for k, v in modes.items()}
    want = [int(b["loss_mask"].sum()) for b in batches]
    assert tokens["megatron"] == tokens["baseline"] == want
    for name, values in losses.items():
        assert all(math.isfinite(v) for v in values), (name, values)
        assert abs(values[0] - math.log(bench.VOCAB)) < 0.5, (name, values)  # both start at ~uniform predictions
