"""Run megatron-core 0.16.1 on CPU with the gloo backend.

megatron-core assumes CUDA in a handful of places. This module patches exactly those places, and
only when ``torch.cuda.is_available()`` is false: on a GPU the same training code runs NCCL and
megatron unpatched. ``apply()`` is idempotent and is called by :mod:`mm1.parallel.setup` before
any megatron object is built; nothing else in the project imports it.

Each patch names the megatron functions it covers:

1. ``torch.cuda.current_device`` -> ``"cpu"``.
   Covers ``tensor_parallel.layers`` / ``mappings._AllToAll`` / ``distributed.param_and_grad_buffer``
   (``device=torch.cuda.current_device()`` when allocating buffers and all-to-all outputs).
2. A CPU RNG tracker installed as megatron's ``_CUDA_RNG_STATE_TRACKER``.
   Covers ``tensor_parallel.random.model_parallel_cuda_manual_seed`` and ``get_cuda_rng_tracker().fork()``
   (dropout in TP regions), which call ``torch.cuda.get_rng_state``/``set_rng_state``.
3. CUDA tensor factories made on CPU, in exactly the megatron modules that ask for them. Each module
   below gets its own copy of the ``torch`` module whose factories (``torch.zeros``/``tensor``/...)
   turn ``device="cuda"`` into CPU; everything else in it is torch's own object, so the model's
   hot path is untouched. ``Tensor.cuda()`` is a no-op. Covers
   ``optimizer.optimizer.MixedPrecisionOptimizer.__init__`` (``found_inf``), ``optimizer.grad_scaler``,
   ``optimizer.clip_grads.get_grad_norm_fp32``/``count_zeros_fp32`` and ``core.utils``'s local l2
   norm, ``pipeline_parallel.schedules.forward_backward_*`` (``total_num_tokens``),
   ``transformer.utils.get_default_causal_mask`` (attention, and the recomputed forward of patch 9),
   ``transformer.moe.moe_utils`` (aux-loss tracker), ``tensor_parallel.data``, and
   ``dist_checkpointing.{exchange_utils,strategies.state_dict_saver}``, ``rerun_state_machine``. (A process-wide
   ``TorchFunctionMode`` did the same before; it sent every torch call in the process through a
   Python hook.)
4. Inert ``torch.cuda.Stream`` / ``Event`` / ``stream()`` / ``current_stream`` / ``synchronize``.
   Covers ``transformer.moe.token_dispatcher.MoEAlltoAllTokenDispatcher`` (its DtoH side stream),
   ``dist_checkpointing.strategies.{fully_parallel,filesystem_async,async_utils}`` (``synchronize``).
5. ``transformer.moe.moe_utils.te_general_gemm = None`` wherever Transformer Engine is missing,
   **on a GPU too** (:func:`fix_megatron`, the one patch that is a plain bug fix). Covers
   ``moe_utils.RouterGatingLinearFunction`` which references the Transformer-Engine GEMM
   unconditionally (``NameError`` without TE, seen on an H100 with the local spec); ``None``
   selects its plain ``torch.matmul`` path.
6. ``transformer.moe.moe_utils.maybe_move_tensor_to_cpu`` also converts CPU tensors to python ints
   when asked for numpy. Covers ``MoEAlltoAllTokenDispatcher._maybe_dtoh_and_synchronize``: on a
   GPU the split sizes arrive on the host as arrays; on CPU they stayed tensors, which gloo's
   ``all_to_all_single`` rejects as split sizes.

7. ``optimizer.clip_grads.clip_grad_by_total_norm_fp32`` (also as imported by
   ``optimizer.optimizer``): the original asserts ``grad.type() == 'torch.cuda.FloatTensor'``;
   the replacement scales the same gradients in place by ``max_norm / (total_norm + 1e-6)``.

8. :func:`cuda_tensor_types` (a context, used only while megatron builds its optimizer): a CPU
   tensor's ``Tensor.type()`` reads as its CUDA type. Covers
   ``optimizer.optimizer.Float16OptimizerWithFloat16Params.__init__`` and
   ``optimizer.distrib_optimizer.DistributedOptimizer._build_model_and_main_param_groups``/``__init__``,
   which sort parameters into fp32/bf16 groups by ``param.type()`` and reject non-CUDA types.

9. Activation recomputation (``parallel.recompute``: ``recompute_granularity`` full or selective).
   Covers ``tensor_parallel.random.CheckpointFunction`` (via ``_get_all_rng_states``/
   ``_set_all_rng_states``/``_fork_rng``): ``_get_cuda_rng_state``/``_set_cuda_rng_state`` become
   no-ops (there is no CUDA generator; the same functions save and restore the CPU generator and
   the tracker of patch 2). The recomputed forward's causal mask is patch 3's.

What is *not* patched but must be chosen by the caller on CPU (see
:func:`mm1.models.megatron_config.required_flags`):
``use_cpu_initialization=True`` (also makes weights independent of the TP size),
``batch_p2p_sync=False``/``batch_p2p_comm=False`` (gloo has no batched isend/irecv),
``persist_layer_norm=False``, ``gradient_accumulation_fusion=False``, MoE with
``add_bias_linear=False``, torch-native norms (``WrappedTorchNorm``) for the ViT's ``ln_pre``/``ln_post``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import types
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_APPLIED = False

# Tensor factories whose ``device=`` keyword megatron sets to "cuda".
_FACTORIES = (
    "tensor", "zeros", "ones", "empty", "full", "arange", "zeros_like", "ones_like", "empty_like",
    "full_like", "as_tensor", "randn", "rand", "randint",
)  # fmt: skip

# The megatron modules (outside inference, export, FSDP and fused kernels) that call a factory with
# ``device="cuda"``; ``tests/parallel/test_compat.py`` greps megatron to keep this list complete.
CUDA_FACTORY_MODULES = (
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.optimizer.optimizer",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.rerun_state_machine",
    "megatron.core.tensor_parallel.data",
    "megatron.core.transformer.moe.moe_utils",
    "megatron.core.transformer.utils",
    "megatron.core.utils",
)


def needed() -> bool:
    """True when megatron must be patched: no CUDA device is usable."""
    return not torch.cuda.is_available()


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return False


def _on_cpu(factory):
    @functools.wraps(factory)
    def make(*args, **kwargs):
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return factory(*args, **kwargs)

    return make


class _TorchOnCpu(types.ModuleType):
    """Patch 3: ``torch`` as one megatron module sees it; names added to torch later still resolve."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def _torch_on_cpu() -> types.ModuleType:
    module = _TorchOnCpu(torch.__name__)
    module.__dict__.update(vars(torch))
    for name in _FACTORIES:
        setattr(module, name, _on_cpu(getattr(torch, name)))
    return module


def _patch_cuda_factories() -> None:
    cpu_torch = _torch_on_cpu()
    for name in CUDA_FACTORY_MODULES:
        importlib.import_module(name).torch = cpu_torch


class CpuRNGStatesTracker:
    """Patch 2: megatron's named RNG-state tracker, backed by the CPU generator.

    Same interface as ``tensor_parallel.random.CudaRNGStatesTracker``: ``add`` registers a seeded
    state under a name, ``fork`` swaps it in for the duration of a block and stores its advance.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.use_cudagraphable_rng = False
        self.is_inference_rng_tracker = False
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise ValueError(f"RNG seed {seed} already tracked")
        if name in self.states_:
            raise ValueError(f"RNG state {name!r} already tracked")
        self.seeds_.add(seed)
        generator = torch.Generator().manual_seed(seed)
        self.states_[name] = generator.get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        if name not in self.states_:
            raise KeyError(f"RNG state {name!r} is not tracked")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


class _InertStream:
    """Patch 4: a CUDA stream/event stand-in; CPU work is already ordered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, *args: Any) -> None:
        pass

    def wait_event(self, *args: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, *args: Any) -> _InertStream:
        return _InertStream()

    def record(self, *args: Any) -> None:
        pass

    def wait(self, *args: Any) -> None:
        pass

    def query(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _InertStream)

    def __hash__(self) -> int:
        return 0


_CURRENT_STREAM = _InertStream()


def _patch_torch_cuda() -> None:
    torch.cuda.current_device = lambda: "cpu"  # patch 1
    torch.cuda.Stream = _InertStream  # patch 4
    torch.cuda.Event = _InertStream
    torch.cuda.current_stream = lambda *a, **k: _CURRENT_STREAM
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.synchronize = lambda *a, **k: None
    torch.Tensor.cuda = lambda self, *a, **k: self  # patch 3 (method form)
    torch.Tensor.record_stream = lambda self, *a, **k: None


def _patch_rng_tracker() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    mrandom.CudaRNGStatesTracker = CpuRNGStatesTracker  # isinstance checks in get_all_rng_states


def _patch_recompute() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = lambda *args, **kwargs: None  # patch 9
    mrandom._set_cuda_rng_state = lambda *args, **kwargs: None


def _patch_moe() -> None:
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    original = moe_utils.maybe_move_tensor_to_cpu

    @functools.wraps(original)
    def to_host(tensor, as_numpy=False, record_stream=False):  # patch 6
        if torch.is_tensor(tensor) and not tensor.is_cuda and as_numpy:
            return tensor.tolist()
        return original(tensor, as_numpy=as_numpy, record_stream=record_stream)

    moe_utils.maybe_move_tensor_to_cpu = to_host
    token_dispatcher.maybe_move_tensor_to_cpu = to_host


def _clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """Patch 7: megatron's gradient clipping without its CUDA-tensor-type assertion."""
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff >= 1.0:
        return
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    for param in parameters:
        grad = getattr(param, "decoupled_grad", None) if use_decoupled_grad else param.grad
        if grad is not None:
            grad.detach().mul_(clip_coeff)


def _patch_clip_grads() -> None:
    from megatron.core.optimizer import clip_grads, optimizer

    clip_grads.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
    optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32


def fix_megatron() -> None:
    """Patch 5, CPU or GPU: megatron's MoE router names ``te_general_gemm`` even without TE."""
    from megatron.core.transformer.moe import moe_utils

    if not getattr(moe_utils, "HAVE_TE", False) and not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


def apply() -> bool:
    """Patch megatron-core for CPU if (and only if) CUDA is unavailable. Returns whether it did."""
    global _APPLIED
    fix_megatron()
    if _APPLIED:
        return True
    if not needed():
        return False
    _patch_torch_cuda()
    _patch_rng_tracker()
    _patch_recompute()
    _patch_moe()
    _patch_clip_grads()
    _patch_cuda_factories()
    _APPLIED = True
    return True


class _CpuTensorsAsCuda(TorchFunctionMode):
    """``Tensor.type()`` of a CPU tensor reads as its CUDA type ("torch.cuda.FloatTensor")."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and out.startswith("torch."):
            return out if out.startswith("torch.cuda.") else "torch.cuda." + out[len("torch.") :]
        return out


def cuda_tensor_types() -> contextlib.AbstractContextManager:
    """Patch 8, for the duration of building megatron's optimizer; a no-op where CUDA exists."""
    return _CpuTensorsAsCuda() if needed() else contextlib.nullcontext()


def reset_rng_tracker() -> None:
    """Give megatron a fresh CPU tracker (``model_parallel_cuda_manual_seed`` re-adds its states)."""
    if _APPLIED:
        _patch_rng_tracker()
