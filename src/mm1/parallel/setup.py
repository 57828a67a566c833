"""Process groups and seeds: the one place that starts torch.distributed and megatron's parallel state.

Under ``torchrun``/``srun`` the rendezvous comes from the environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT). Started as a plain process, a one-process group is created on a free
loopback port, so every stage runs megatron the same way whether it has 1 or 1,000 ranks.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import random
import socket
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from mm1.config import ParallelConfig
from mm1.parallel import compat, launch

with warnings.catch_warnings():  # megatron warns at import that apex/TE are absent
    warnings.simplefilter("ignore")
    from megatron.core import parallel_state, tensor_parallel


@dataclass(frozen=True)
class Rank:
    """Where this process sits in the layout."""

    rank: int
    world_size: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    dp_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_last_stage(self) -> bool:
        return parallel_state.is_pipeline_last_stage()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend(requested: str) -> str:
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() else "gloo"


def seed_everything(seed: int) -> None:
    """Seed python, numpy, torch and megatron's named RNG streams (data-parallel, TP, expert)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def initialize(parallel: ParallelConfig, seed: int) -> Rank:
    """Start the process group and megatron's model-parallel groups for ``parallel``; a collective in
    any of them that waits longer than ``parallel.collective_timeout_minutes`` fails."""
    compat.apply()
    launch.torch_env_from_slurm()  # srun tasks: RANK/WORLD_SIZE/MASTER_* from SLURM's variables
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")  # megatron's advice for TP comm overlap
    backend = _backend(parallel.backend)
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("parallel.backend='nccl' needs CUDA; use 'gloo' or 'auto' on CPU")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size != parallel.world_size:
        raise RuntimeError(
            f"parallel.world_size={parallel.world_size} but {world_size} process(es) were started; "
            f"launch with `torchrun --nproc-per-node {parallel.world_size}` or set parallel.world_size={world_size}"
        )
    if torch.cuda.is_available():  # srun binds one GPU per rank (it sees only that one); torchrun shows all
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    if not torch.distributed.is_initialized():
        timeout = datetime.timedelta(minutes=parallel.collective_timeout_minutes)
        if "RANK" in os.environ:  # under torchrun/srun: rendezvous from the environment
            torch.distributed.init_process_group(backend, timeout=timeout)
        else:  # a plain single process; os.environ is left alone so child processes start clean
            torch.distributed.init_process_group(
                backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1, timeout=timeout
            )
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        expert_model_parallel_size=parallel.ep,
        distributed_timeout_minutes=math.ceil(parallel.collective_timeout_minutes),  # its groups' (default 30)
    )
    compat.reset_rng_tracker()
    seed_everything(seed)
    return Rank(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
        device=torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"),
    )


def shutdown(clean: bool = True) -> None:
    """Tear down megatron's groups and the process group (safe to call twice).

    ``clean=False`` (after an error) skips the final barrier: the other ranks may be blocked in a
    collective that will never complete, and the launcher ends them when this rank exits.
    """
    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        if clean:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def distributed(parallel: ParallelConfig, seed: int):
    """``with distributed(cfg.parallel, cfg.train.seed) as rank: ...`` — always shuts down."""
    rank = initialize(parallel, seed)
    try:
        yield rank
    except BaseException:
        shutdown(clean=False)
        raise
    shutdown()
