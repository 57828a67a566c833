"""Check a run's own layout, search for the fastest one on N nodes, and size its SLURM job."""

from __future__ import annotations

import math
from dataclasses import replace

from mm1.config import RunConfig
from mm1.plan.estimate import Plan, evaluate, plan_of, resolve_mfu, resolve_recompute
from mm1.plan.facts import Facts, facts
from mm1.plan.gpus import GPU, find_gpu
from mm1.plan.layout import ClusterLayout, PlanError, apply, problems

RECOMPUTE = ("none", "selective", "full")  # in order of memory saved (and time spent)

# Host side of a training job, per GPU (task): data-loader workers and the main process, and host
# memory for them plus checkpoint shards in flight. Typical of 8-GPU nodes (DGX H100: 112 cores and
# 2 TB for 8 GPUs); a cluster profile may ask for more.
CPUS_PER_TASK = 8
HOST_MB_PER_GPU = 64_000
# Runtime: the estimate x SAFETY (the MFU is a guess; checkpoint saves and stragglers are not
# modelled) + STARTUP_MINUTES (launch, rendezvous, loading a checkpoint), capped at MAX_MINUTES (a
# common partition limit). A longer run spans several jobs: before the limit SLURM's SIGTERM makes `mm1 train` save
# and exit 75, and the next job resumes from the newest checkpoint (train.resume).
SAFETY = 1.5
STARTUP_MINUTES = 30
MAX_MINUTES = 48 * 60


def _gpu(gpu: GPU | str) -> GPU:
    return find_gpu(gpu) if isinstance(gpu, str) else gpu


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _alternatives(lay: ClusterLayout, cfg: RunConfig) -> list[tuple[str, ClusterLayout]]:
    """One-field changes that keep the GPU count: (how to say it, the changed layout)."""
    out = []
    if not lay.sequence_parallel and lay.tp > 1:
        out.append(("set parallel.sequence_parallel=true", replace(lay, sequence_parallel=True)))
    if not lay.distributed_optimizer and lay.dp > 1:
        out.append(("set parallel.distributed_optimizer=true", replace(lay, distributed_optimizer=True)))
    for rc in RECOMPUTE[RECOMPUTE.index(lay.recompute) + 1 :]:
        out.append((f"set parallel.recompute={rc}", replace(lay, recompute=rc)))
    for micro in reversed(_divisors(lay.micro_batch_size)[:-1]):
        out.append((f"lower train.micro_batch_size to {micro}", replace(lay, micro_batch_size=micro)))
    for tp in (d for d in _divisors(lay.gpus_per_node) if d > lay.tp):
        out.append((f"raise parallel.tp to {tp}", replace(lay, tp=tp)))
    for pp in (d for d in _divisors(cfg.model.decoder.num_layers) if d > lay.pp):
        out.append((f"raise parallel.pp to {pp}", replace(lay, pp=pp)))
    if cfg.model.moe.enabled:
        for ep in (d for d in _divisors(cfg.model.moe.num_experts) if d > lay.ep):
            out.append((f"raise parallel.ep to {ep}", replace(lay, ep=ep)))
    return out


def _fixes(f: Facts, lay: ClusterLayout, cfg: RunConfig, gpu: GPU, mfu: float) -> list[str]:
    """The smallest fitting step along each field, fastest first (at most three)."""
    found: dict[str, tuple[float, str]] = {}
    for text, alt in _alternatives(lay, cfg):
        field = text.split()[1].split("=")[0]
        if field in found or problems(alt, cfg):
            continue
        memory, _, seconds = evaluate(f, alt, gpu, mfu)
        if memory.total <= gpu.memory_gb:
            found[field] = (seconds, text)
    return [text for _, text in sorted(found.values())][:3]


def check(cfg: RunConfig, gpu: GPU | str, mfu: float | None = None, images_per_sequence: float | None = None) -> Plan:
    """The plan of ``cfg``'s own layout; PlanError naming the field and the fix if it does not
    divide or does not fit in ``gpu``'s memory. ``mfu`` None: the config's parallel.plan_mfu."""
    gpu = _gpu(gpu)
    cfg = resolve_recompute(cfg, gpu.memory_gb)  # parallel.recompute auto: the least that fits this GPU
    lay = ClusterLayout.of(cfg)
    mfu = resolve_mfu(cfg, mfu)
    issues = problems(lay, cfg)
    if issues:
        raise PlanError(f"{cfg.name}: " + "; ".join(issues))
    f = facts(cfg, images_per_sequence)
    plan = plan_of(cfg, f, lay, gpu, mfu)
    if plan.fits:
        return plan
    where = f" (pipeline stage {plan.stage})" if lay.pp > 1 else ""
    need = f"{cfg.name} needs {plan.memory.total:.1f} GB per GPU{where} on {gpu.name} ({gpu.memory_gb:g} GB)"
    fixes = _fixes(f, lay, cfg, gpu, mfu)
    if fixes:
        raise PlanError(f"{need}: {' or '.join(fixes)}")
    raise PlanError(
        f"{need}, and no single change of tp, pp, ep, recompute, micro-batch or distributed optimizer fits "
        f"on {lay.world_size} GPUs: add nodes (`mm1 plan --preset NAME --gpu {gpu.name} --nodes N` searches a layout)"
    )


def _candidates(cfg: RunConfig, world: int, gpus_per_node: int):
    dec, moe, batch = cfg.model.decoder, cfg.model.moe, cfg.train.global_batch_size
    for tp in _divisors(gpus_per_node):
        for pp in _divisors(dec.num_layers):
            if world % (tp * pp) or batch % (world // (tp * pp)):
                continue
            dp = world // (tp * pp)
            for ep in _divisors(moe.num_experts) if moe.enabled else [1]:
                for micro in _divisors(batch // dp):
                    for rc in RECOMPUTE:  # sequence parallelism wherever it applies: it costs nothing
                        yield ClusterLayout(world, gpus_per_node, tp, pp, ep, micro, batch, rc, True, tp > 1)


def choose(
    cfg: RunConfig,
    gpu: GPU | str,
    nodes: int | None = None,
    mfu: float | None = None,
    images_per_sequence: float | None = None,
) -> Plan:
    """Without ``nodes``: :func:`check` of the config's own layout. With ``nodes``: the fastest
    layout that fits on that many nodes of parallel.gpus_per_node (default: the GPU's node, 8)
    GPUs, searching TP (within a node), PP, EP (MoE), micro-batch size and recomputation, with the
    distributed optimizer on, sequence parallelism wherever TP > 1 (less memory, the same traffic)
    and train.global_batch_size kept; never overlapped gradient reduction, which training refuses
    (parallel.overlap_grad_reduce). ``mfu`` None: the config's parallel.plan_mfu. Ties (equal estimated time) go to
    fewer model-parallel ranks (tp x pp), then a smaller ep, then less memory."""
    gpu = _gpu(gpu)
    cfg = resolve_recompute(cfg, gpu.memory_gb)
    mfu = resolve_mfu(cfg, mfu)
    if nodes is None:
        return check(cfg, gpu, mfu, images_per_sequence)
    if nodes < 1:
        raise PlanError(f"--nodes={nodes} must be at least 1")
    gpn = cfg.parallel.gpus_per_node or gpu.gpus_per_node
    f = facts(cfg, images_per_sequence)
    best, best_key, least = None, None, math.inf
    for lay in _candidates(cfg, nodes * gpn, gpn):
        if problems(lay, cfg):
            continue
        memory, _, seconds = evaluate(f, lay, gpu, mfu)
        least = min(least, memory.total)
        if memory.total > gpu.memory_gb:
            continue
        key = (float(f"{seconds:.4g}"), lay.tp * lay.pp, lay.ep, memory.total)
        if best_key is None or key < best_key:
            best, best_key = lay, key
    if best is None:
        raise PlanError(
            f"{cfg.name}: no layout on {nodes} node(s) x {gpn} {gpu.name} fits"
            + (f" (the smallest needs {least:.1f} GB per GPU of {gpu.memory_gb:g})" if least < math.inf else "")
            + ": use more nodes"
        )
    return plan_of(apply(cfg, best), f, best, gpu, mfu)


def job_resources(
    cfg: RunConfig,
    gpu: str,
    mfu: float | None = None,
    images_per_sequence: float | None = None,
    max_minutes: int = MAX_MINUTES,
) -> dict[str, int]:
    """SLURM resources of one training job of ``cfg`` on ``gpu`` (PlanError if the layout does not fit).

    nodes, tasks (= world_size), tasks_per_node and gpus_per_node (one task per GPU), cpus_per_task,
    mem_mb (host memory per node: HOST_MB_PER_GPU per task) and runtime in minutes: the estimated
    training time x SAFETY + STARTUP_MINUTES, capped at ``max_minutes`` (see the module constants).
    """
    plan = check(cfg, gpu, mfu, images_per_sequence)
    lay = plan.layout
    minutes = math.ceil(plan.hours * 60 * SAFETY + STARTUP_MINUTES)
    return {
        "nodes": lay.nodes,
        "tasks": lay.world_size,
        "tasks_per_node": lay.gpus_per_node,
        "gpus_per_node": lay.gpus_per_node,
        "cpus_per_task": CPUS_PER_TASK,
        "mem_mb": lay.gpus_per_node * HOST_MB_PER_GPU,
        "runtime": min(minutes, max_minutes),
    }
