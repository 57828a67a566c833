"""CPU patches for megatron-core: the CPU RNG tracker, the CUDA -> CPU rewrites, required config flags."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import megatron.core
import pytest
import torch

from mm1.models.megatron_config import required_flags
from mm1.parallel import compat
from mm1.parallel.compat import CpuRNGStatesTracker

NEEDS_PATCH = pytest.mark.skipif(
    torch.cuda.is_available(), reason="compat.apply() patches only when CUDA is unavailable"
)

# --- CpuRNGStatesTracker ------------------------------------------------------------------------


def test_fork_restores_the_outer_rng_state() -> None:
    tracker = CpuRNGStatesTracker()
    tracker.add("tp", 5)
    torch.manual_seed(0)
    outer = torch.get_rng_state()
    with tracker.fork("tp"):
        torch.rand(10)
    assert torch.equal(torch.get_rng_state(), outer)


def test_fork_restores_the_outer_state_when_the_block_raises() -> None:
    tracker = CpuRNGStatesTracker()
    tracker.add("tp", 5)
    torch.manual_seed(0)
    outer = torch.get_rng_state()
    with pytest.raises(RuntimeError), tracker.fork("tp"):
        torch.rand(3)
        raise RuntimeError("inside the fork")
    assert torch.equal(torch.get_rng_state(), outer)


def test_forked_stream_is_the_seeded_generator_and_advances() -> None:
    tracker = CpuRNGStatesTracker()
    tracker.add("model-parallel-rng", 42)
    reference = torch.Generator().manual_seed(42)
    torch.manual_seed(7)  # the outer state must not matter
    with tracker.fork():
        first = torch.rand(4)
    with tracker.fork():
        second = torch.rand(4)
    assert torch.equal(first, torch.rand(4, generator=reference))
    assert torch.equal(second, torch.rand(4, generator=reference))  # continues, does not restart
    assert not torch.equal(first, second)


def test_same_seed_gives_the_same_stream_in_two_trackers() -> None:
    a, b = CpuRNGStatesTracker(), CpuRNGStatesTracker()
    a.add("x", 9)
    b.add("x", 9)
    with a.fork("x"):
        ra = torch.randn(5)
    with b.fork("x"):
        rb = torch.randn(5)
    assert torch.equal(ra, rb)


def test_named_streams_are_independent() -> None:
    tracker = CpuRNGStatesTracker()
    tracker.add("a", 1)
    tracker.add("b", 2)
    with tracker.fork("a"):
        ra = torch.rand(4)
    with tracker.fork("b"):
        rb = torch.rand(4)
    assert torch.equal(ra, torch.rand(4, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(rb, torch.rand(4, generator=torch.Generator().manual_seed(2)))


def test_duplicate_seed_or_name_is_rejected() -> None:
    tracker = CpuRNGStatesTracker()
    tracker.add("a", 1)
    with pytest.raises(ValueError, match="seed 1"):
        tracker.add("b", 1)
    with pytest.raises(ValueError, match="'a'"):
        tracker.add("a", 2)


def test_fork_of_an_unknown_name_raises() -> None:
    tracker = CpuRNGStatesTracker()
    with pytest.raises(KeyError, match="nope"):
        with tracker.fork("nope"):
            pass


def test_get_set_states_replays_a_stream() -> None:
    tracker = CpuRNGStatesTracker()
    assert not tracker.is_initialized()
    tracker.add("a", 3)
    assert tracker.is_initialized()
    saved = tracker.get_states()
    with tracker.fork("a"):
        first = torch.rand(3)
    tracker.set_states(saved)
    with tracker.fork("a"):
        again = torch.rand(3)
    assert torch.equal(first, again)


def test_reset_forgets_states_and_seeds() -> None:
    tracker = CpuRNGStatesTracker()
    tracker.add("a", 3)
    tracker.reset()
    assert not tracker.is_initialized()
    assert tracker.get_states() == {}
    tracker.add("a", 3)  # neither the name nor the seed is taken any more


# --- compat.apply() -----------------------------------------------------------------------------


def test_required_flags_match_the_device() -> None:
    flags = required_flags()
    if torch.cuda.is_available():
        assert flags == {}
    else:
        assert flags["use_cpu_initialization"] is True
        assert flags["gradient_accumulation_fusion"] is False
        assert flags["batch_p2p_comm"] is False


def test_required_flags_are_valid_transformer_config_fields() -> None:
    from megatron.core.transformer import TransformerConfig

    fields = set(TransformerConfig.__dataclass_fields__)
    assert set(required_flags()) <= fields


def test_apply_is_a_no_op_with_cuda() -> None:
    if torch.cuda.is_available():
        assert compat.apply() is False
    else:
        assert compat.apply() is True
        assert compat.apply() is True  # idempotent


def test_router_gemm_fix_applies_on_any_device_without_transformer_engine(monkeypatch) -> None:
    """megatron's MoE router reads ``te_general_gemm`` even without TE (a NameError on an H100)."""
    from megatron.core.transformer.moe import moe_utils

    monkeypatch.delattr(moe_utils, "te_general_gemm", raising=False)
    monkeypatch.setattr(moe_utils, "HAVE_TE", False)
    monkeypatch.setattr(compat, "needed", lambda: False)  # as on a GPU machine
    monkeypatch.setattr(compat, "_APPLIED", False)
    assert compat.apply() is False
    assert moe_utils.te_general_gemm is None
    weight, inp = torch.randn(4, 8), torch.randn(3, 8)
    logits = moe_utils.router_gating_linear(inp, weight, None, torch.float32)
    torch.testing.assert_close(logits, inp @ weight.T)


@NEEDS_PATCH
@pytest.mark.parametrize("module", compat.CUDA_FACTORY_MODULES)
@pytest.mark.parametrize(
    "make",
    [
        lambda t: t.zeros(2, device="cuda"),
        lambda t: t.ones(2, device=torch.device("cuda")),
        lambda t: t.tensor([1.0, 2.0], device="cuda:0"),
        lambda t: t.full((2,), 3.0, device="cuda"),
        lambda t: t.arange(3, device="cuda"),
        lambda t: t.empty_like(t.ones(2), device="cuda"),
    ],
)
def test_cuda_factories_make_cpu_tensors_in_the_patched_megatron_modules(module, make) -> None:
    compat.apply()
    t = make(importlib.import_module(module).torch)
    assert t.device.type == "cpu"


@NEEDS_PATCH
def test_the_rest_of_the_process_keeps_torch_untouched_and_on_its_fast_path() -> None:
    from megatron.core.transformer.utils import get_default_causal_mask

    compat.apply()
    assert torch.overrides._get_current_function_mode_stack() == []  # no process-wide mode
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(2, device="cuda")  # outside megatron a CUDA request still fails loudly
    mask = get_default_causal_mask(3)  # attention's mask, imported by name into fused_softmax
    assert mask.device.type == "cpu" and mask.tolist() == [[False, True, True], [False, False, True], [False] * 3]


def test_every_megatron_module_that_asks_for_cuda_tensors_is_patched() -> None:
    """Grep megatron-core for ``device="cuda"`` factories; a new call site fails here, not mid-training."""
    root = Path(megatron.core.__file__).parent
    skip = ("inference", "export", "post_training", "datasets", "ssm", "fusions", "fsdp", "extensions",
            "resharding", "tokenizers", "models/mamba")  # fmt: skip
    asking = set()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if any(part in rel for part in skip):
            continue
        text = path.read_text()
        if re.search(r"""device\s*=\s*['"]cuda['"]""", text):
            asking.add("megatron.core." + rel[: -len(".py")].replace("/", "."))
    unused = {  # paths a CPU run never takes: energy monitoring, NCCL buffers, CUDA graphs, hybrid CP, FP8
        "megatron.core.energy_monitor", "megatron.core.nccl_allocator", "megatron.core.full_cuda_graph",
        "megatron.core.pipeline_parallel.hybrid_cp_schedule", "megatron.core.fp8_utils",
        "megatron.core.pipeline_parallel.fine_grained_activation_offload",
        "megatron.core.pipeline_parallel.utils",  # torch.cuda.Stream(device="cuda"): patch 4's inert stream
    }  # fmt: skip
    assert asking - unused <= set(compat.CUDA_FACTORY_MODULES), sorted(
        asking - unused - set(compat.CUDA_FACTORY_MODULES)
    )
    assert set(compat.CUDA_FACTORY_MODULES) <= asking  # no stale entries


@NEEDS_PATCH
def test_tensor_cuda_and_current_device_after_apply() -> None:
    compat.apply()
    t = torch.ones(2)
    assert t.cuda() is t
    assert torch.cuda.current_device() == "cpu"
    with torch.cuda.stream(torch.cuda.Stream()):
        torch.cuda.current_stream().synchronize()
    torch.cuda.synchronize()


@NEEDS_PATCH
def test_apply_installs_the_cpu_tracker_in_megatron() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    compat.apply()
    assert isinstance(mrandom.get_cuda_rng_tracker(), CpuRNGStatesTracker)
    compat.reset_rng_tracker()
    assert not mrandom.get_cuda_rng_tracker().is_initialized()


@NEEDS_PATCH
def test_megatron_seeding_runs_on_the_cpu_tracker() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    from mm1.config import ParallelConfig
    from mm1.parallel.setup import distributed

    draws = []
    for seed in (123, 123, 124):
        with distributed(ParallelConfig(), seed=seed):  # calls megatron's model_parallel_cuda_manual_seed
            tracker = mrandom.get_cuda_rng_tracker()
            assert isinstance(tracker, CpuRNGStatesTracker) and tracker.is_initialized()
            outer = torch.get_rng_state()
            with tracker.fork():
                draws.append(torch.rand(4))
            assert torch.equal(torch.get_rng_state(), outer)
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


@NEEDS_PATCH
def test_patched_clip_scales_gradients_by_the_total_norm() -> None:
    from megatron.core.optimizer import clip_grads

    compat.apply()
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(2)]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.tensor([0.0, 4.0, 0.0])
    total = 5.0
    clip_grads.clip_grad_by_total_norm_fp32(params, max_norm=1.0, total_norm=total)
    norm = torch.cat([p.grad for p in params]).norm()
    torch.testing.assert_close(norm, torch.tensor(1.0), atol=1e-5, rtol=0)
    # below the threshold nothing changes
    before = [p.grad.clone() for p in params]
    clip_grads.clip_grad_by_total_norm_fp32(params, max_norm=10.0, total_norm=1.0)
    assert all(torch.equal(b, p.grad) for b, p in zip(before, params, strict=True))


def test_megatron_fusion_kernels_are_plain_functions_on_cpu_and_compiled_on_gpu() -> None:
    """mm1.jit_hook: importing mm1 first keeps megatron's jit_fuser from torch.compile on CPU."""
    import subprocess
    import sys

    probe = (
        "import {first}\n"
        "from megatron.core import jit\n"
        "from megatron.core.fusions import fused_bias_gelu as f\n"
        "print(jit.jit_fuser is jit.noop_decorator, hasattr(f.bias_gelu, '_torchdynamo_orig_callable'))\n"
    )

    def run(first: str) -> list[str]:
        cmd = [sys.executable, "-W", "ignore", "-c", probe.format(first=first)]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()

    assert run("torch") == ["False", "True"]  # megatron on its own compiles its fusions
    assert run("mm1") == (["False", "True"] if torch.cuda.is_available() else ["True", "False"])
