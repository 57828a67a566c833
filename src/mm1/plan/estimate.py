"""Memory per GPU and time per step of one layout, by formula.

Memory, per GPU, on the first and on the last pipeline stage (the planner reports the fuller one;
a middle stage holds no more than the first). Precision as on GPU (train.precision bf16):

* parameters: bf16 weights (2 B) + the fp32 main copy in the optimizer (4 B);
* gradients: megatron DDP's fp32 grad buffer (4 B; grad_reduce_in_fp32 in bf16);
* optimizer: Adam m and v (8 B).
  With parallel.distributed_optimizer the main copy and m, v are sharded over the data-parallel
  ranks (expert parameters over the expert-data-parallel ranks dp / ep), as megatron's
  distributed optimizer does: 6 + 12/dp bytes per parameter instead of 18.
  A stage holds its decoder layers; the first also the encoder, connector and input embedding,
  the last the final norm and output layer. Everything is split over TP except the connector
  (replicated on every TP rank); expert MLPs are split over TP x EP (megatron's expert TP = TP).
* activations, per micro-batch of b sequences: Korthikanti et al. 2022 ("Reducing activation
  recomputation in large transformer models", Sec. 4 and Table 2), tensor by tensor, for the layers
  mm1 builds with megatron's local spec and SDPA core attention (:mod:`mm1.models.attention`):
  16-bit activations, TP t. Per layer of s tokens, width h, a heads, in bytes:
      none       sbh (8/r + (A + M)/t) + 2sbh/t + 4asb/t
      selective  sbh (8/r + (A + M)/t)               (the attention core is recomputed)
      full       2sbh/r                              (the layer input; the layer is recomputed)
  r = t with parallel.sequence_parallel (megatron splits the norms' and residuals' tensors over the
  sequence; decoder only, the ViT does not use it), r = 1 without. 8: both norms' inputs and outputs
  (the QKV and fc1 inputs). A, attention: the fused QKV output (6; the value view keeps it alive)
  and the projection's input (2), A = 8; with RoPE also the rotated Q and K and a RoPE
  intermediate, A = 14. M, the MLP, per token in units of h bytes: 4f/h for GeLU and for megatron's
  fused quick-GELU (fc1 output, activation output), 10f/h for SwiGLU (the 2f-wide fc1 output and
  three f-wide tensors). SDPA stores no s x s scores: without recomputation the fused kernel keeps
  its own output (2sbh/t, a copy whenever the projection's input is not a view of it) and the fp32
  log-sum-exp of each query row (4asb/t); the paper's 5as^2b score/softmax/dropout terms are gone.
  mm1 trains without dropout: no masks. With dropout masks (+2 sbh), scores (5as^2b), no RoPE and a
  4h GeLU MLP (M = 16) these terms give the paper's sbh (10 + 24/t + 5as/(ht)). A = 14 and M = 10f/h
  were measured on an H100 (bench/plan_memory.py, bench/results/plan_memory.json: kept activations
  of mm1-ablation, mm1-3b and mm1-7b, selective, within 1%), and so was the SDPA model as a whole:
  mm1-ablation on one H100 (bench/results/gpu_mfu*.json) peaked at 45.4 GB allocated with recompute
  none, micro-batch 1, and at 62.7 GB with selective, micro-batch 2; the plan, without its overhead,
  is within 2% of both (tests/test_plan.py). Full recomputation adds one layer's "none" activations:
  the layer being recomputed. An MoE layer keeps each token's expert-MLP activations once per expert
  it visits (M x top_k) plus its dispatched copy and the router-weighted expert output (4 x top_k
  sbh, replicated unless sequence-parallel; not measured). Grouped-query attention is counted as
  multi-head (not measured). The ViT uses the same terms per image (s = patches + class token) for
  data.mixture.max_images_per_sequence images per sequence; the connector's saved tensors are
  measured on the meta device (:mod:`mm1.plan.facts`).
  1F1B pipelining keeps min(pp - i, micro-batches) micro-batches in flight on stage i: pp on the
  first stage. The last stage also holds the logits of one micro-batch: bf16 and the fp32 copy of
  megatron's vocab-parallel cross entropy, 6 sbV/t bytes.
* the optimizer step: torch's AdamW (foreach) makes fp32 temporaries the size of the parameters it
  updates, 4 B per (sharded) parameter, when the activations are already freed; a stage needs
  max(activations, that). Measured: the first step of mm1-ablation on an H100 peaked at 34.3 GB,
  before Adam's m and v existed: 2 + 4 + 4 (weights, main copy, grads) + 4 (temporaries) B/param
  = 14 x 1.55e9 = 21.8 GB + m, v created in that step (12.4 GB) = 34.2 GB.
* overhead: 3 GB outside PyTorch's allocator (CUDA context, cuBLAS and NCCL workspaces; measured:
  79.2 GiB in use on the H100 at an out-of-memory, 75.9 GiB of it allocated by PyTorch and 0.4 GiB
  cached) + 5% of the rest for the caching allocator's unusable blocks (0.5% measured there).

Time: each GPU runs its stage's share of the forward and backward (3 x forward FLOPs) plus what
recomputation redoes (selective: the attention scores and A.V, 4 s^2 h per layer; full: one more
forward of every layer) at ``mfu`` x the GPU's peak (default: the config's parallel.plan_mfu, as
measured); the connector runs whole on every TP rank. Communication at the GPU's bandwidths
(:mod:`mm1.plan.gpus`), for megatron's rank order tp-ep-dp-pp (a TP group is tp consecutive
ranks, an EP group tp x ep, a DP group dp ranks tp apart):
* TP: 4 all-reduces per layer per micro-batch (6 under full recomputation) of 2sbh bytes; with
  sequence parallelism each becomes a reduce-scatter plus an all-gather, the same bytes;
* EP: 4 all-to-alls per MoE layer per micro-batch (6 under full) of the top_k copies of each
  token, 2 x top_k x sbh bytes, (ep - 1)/ep of which leave the GPU;
* DP, once per step: the fp32 gradients reduce-scattered and the bf16 weights all-gathered under
  the distributed optimizer, the fp32 gradients all-reduced without it, (d - 1)/d x (4 + 2) or
  2 (d - 1)/d x 4 bytes per parameter (experts over their dp / ep ranks). A group with k ranks on
  each of m nodes runs hierarchically, as NCCL does: the k ranks of a node over NVLink, then each of
  them a 1/k share over its own NIC, so a node's k NICs carry the group's traffic between nodes:
  bytes x ((k - 1)/k / nvlink + (m - 1)/m / (k x network)). With parallel.overlap_grad_reduce the
  gradient part runs during the backward of the last micro-batch (2/3 of its compute) and only
  what does not fit in it is added; the weight all-gather is never overlapped.
A 1F1B step takes (micro-batches + pp - 1) x the slowest stage's time per micro-batch (the first
stage, which also runs the encoder, or the last, which runs the output layer), plus the DP sync.
Not modelled: pipeline sends (~2sbh per micro-batch per stage boundary), data loading, stragglers.
``mfu`` is therefore the utilisation of the matmuls themselves; ``Plan.mfu_effective`` is what is
left after bubbles, recomputation and communication (model FLOPs / (step time x GPUs x peak)).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from mm1.config import ParallelConfig, RunConfig
from mm1.plan.facts import Facts, facts
from mm1.plan.gpus import GPU, find_gpu
from mm1.plan.layout import ClusterLayout, PlanError

GB = 1e9
CONTEXT_GB = 3.0  # outside PyTorch's allocator: CUDA context, cuBLAS and NCCL workspaces (measured, docstring)
FRAGMENTATION = 0.05  # of everything else: the caching allocator's unusable blocks
DEFAULT_MFU: float = ParallelConfig.model_fields["plan_mfu"].default  # measured on an H100 (config docstring)


@dataclass(frozen=True)
class Memory:
    """GB per GPU on one pipeline stage."""

    params: float  # bf16 weights + fp32 main copy
    grads: float  # fp32 grad buffer
    optimizer: float  # Adam m, v
    activations: float
    overhead: float
    step_temporaries: float = 0.0  # the optimizer step's fp32 temporaries, when activations are freed

    @property
    def total(self) -> float:
        peak = max(self.activations, self.step_temporaries)
        return self.params + self.grads + self.optimizer + peak + self.overhead


def layer_activations(
    s: int,
    b: float,
    h: int,
    a: int,
    t: int,
    recompute: str,
    attention: float,
    mlp: float,
    routed: int = 0,
    sp: bool = False,
) -> float:
    """Bytes one transformer layer keeps for backward (module docstring): ``attention`` and ``mlp``
    are A and M, ``routed`` the top_k of an MoE layer (0: a dense layer), ``sp`` sequence parallelism."""
    sbh, r = s * b * h, t if sp else 1
    if recompute == "full":
        return 2 * sbh / r
    kept = sbh * ((8 + 4 * routed) / r + (attention + mlp * max(routed, 1)) / t)
    if recompute == "none":  # SDPA's own output and its fp32 log-sum-exp per query row
        kept += 2 * sbh / t + 4 * a * s * b / t
    return kept


def _stage_layers(f: Facts, lay: ClusterLayout, stage: int) -> tuple[int, int]:
    """(dense, MoE) decoder layers on pipeline stage ``stage``."""
    per = f.layers // lay.pp
    moe = sum(1 for i in range(stage * per, (stage + 1) * per) if i in f.moe_ids)
    return per - moe, moe


def _stage_params(f: Facts, lay: ClusterLayout, stage: int) -> tuple[float, float]:
    """(non-expert, expert) parameters per GPU on stage ``stage``: split over TP (the connector
    replicated), experts over TP x EP."""
    first, last = stage == 0, stage == lay.pp - 1
    n_dense, n_moe = _stage_layers(f, lay, stage)
    split = n_dense * f.dense_layer + n_moe * f.moe_layer + first * (f.encoder + f.embedding) + last * f.head
    return split / lay.tp + first * f.connector, n_moe * f.experts / (lay.tp * lay.ep)


def _micro_batch_activations(f: Facts, lay: ClusterLayout, stage: int, recompute: str) -> float:
    """Bytes one micro-batch keeps on stage ``stage`` (decoder layers; the ViT and connector on the first)."""
    n_dense, n_moe = _stage_layers(f, lay, stage)
    t, b, sp = lay.tp, lay.micro_batch_size, lay.sequence_parallel
    dec = layer_activations(f.seq, b, f.hidden, f.heads, t, recompute, f.attention, f.mlp, sp=sp)
    dec_moe = layer_activations(f.seq, b, f.hidden, f.heads, t, recompute, f.attention, f.mlp, f.top_k, sp)
    kept = n_dense * dec + n_moe * dec_moe
    if stage == 0:
        enc = layer_activations(
            f.enc_tokens, b * f.images, f.enc_hidden, f.enc_heads, t, recompute, f.enc_attention, f.enc_mlp
        )
        kept += f.enc_layers * enc + f.connector_bytes * b * f.images
    return kept


def stage_memory(f: Facts, lay: ClusterLayout, stage: int) -> Memory:
    """GB per GPU on pipeline stage ``stage`` (0 .. pp - 1)."""
    last = stage == lay.pp - 1
    dense, expert = _stage_params(f, lay, stage)
    shard_dense, shard_expert = (lay.dp, lay.dp // lay.ep) if lay.distributed_optimizer else (1, 1)
    sharded = dense / shard_dense + expert / shard_expert  # fp32 main copy and Adam states
    in_flight = min(lay.pp - stage, lay.micro_batches)
    kept = _micro_batch_activations(f, lay, stage, lay.recompute)
    activations = in_flight * kept + last * 6 * f.seq * lay.micro_batch_size * f.vocab / lay.tp
    if lay.recompute == "full":  # the one layer being recomputed holds everything at once
        t, b, n_moe = lay.tp, lay.micro_batch_size, _stage_layers(f, lay, stage)[1]
        routed = f.top_k if n_moe else 0
        working = [
            layer_activations(f.seq, b, f.hidden, f.heads, t, "none", f.attention, f.mlp, routed, lay.sequence_parallel)
        ]
        if stage == 0:
            enc = (f.enc_tokens, b * f.images, f.enc_hidden, f.enc_heads, t, "none", f.enc_attention, f.enc_mlp)
            working.append(layer_activations(*enc))
        activations += max(working)
    parts = [2 * (dense + expert) + 4 * sharded, 4 * (dense + expert), 8 * sharded, activations]
    temporaries = 4 * sharded
    rest = sum(parts[:3]) + max(activations, temporaries)
    return Memory(*(p / GB for p in parts), CONTEXT_GB + FRAGMENTATION * rest / GB, temporaries / GB)


def _collective_seconds(nbytes: float, ranks: int, stride: int, lay: ClusterLayout, gpu: GPU) -> float:
    """Seconds to move ``nbytes`` per GPU through a collective of ``ranks`` ranks ``stride`` apart:
    hierarchically when they span nodes (module docstring)."""
    k = min(ranks, max(1, lay.gpus_per_node // stride))  # ranks of the group on one node
    m = ranks // k  # nodes it spans
    return nbytes * ((k - 1) / k / (gpu.nvlink_gbps * GB) + (m - 1) / m / (k * gpu.network_gbps * GB))


def _bandwidth(gpu: GPU, lay: ClusterLayout, group_span: int) -> float:
    """Bytes/s of a collective among ranks spread over ``group_span`` consecutive ranks (TP, EP)."""
    return (gpu.nvlink_gbps if group_span <= lay.gpus_per_node else gpu.network_gbps) * GB


def _compute_seconds(f: Facts, lay: ClusterLayout, gpu: GPU, mfu: float, stage: int) -> float:
    """Seconds of matmuls pipeline stage ``stage`` runs for one micro-batch, forward and backward."""
    first, last = stage == 0, stage == lay.pp - 1
    n_dense, n_moe = _stage_layers(f, lay, stage)
    t, b, ips, rc = lay.tp, lay.micro_batch_size, f.images_flops, lay.recompute
    layers = n_dense * f.dense_layer_flops + n_moe * f.moe_layer_flops
    forward = layers + first * ips * f.enc_flops + last * f.head_flops  # per sequence, split over TP
    redo = {
        "none": 0.0,
        "selective": (n_dense + n_moe) * f.dec_attn_core_flops + first * ips * f.enc_layers * f.enc_attn_core_flops,
        "full": layers + first * ips * f.enc_flops,
    }[rc]
    rate = gpu.bf16_tflops * 1e12 * mfu
    return b * (3 * forward + redo) / (t * rate) + first * b * ips * 3 * f.con_flops / rate


def stage_seconds(f: Facts, lay: ClusterLayout, gpu: GPU, mfu: float, stage: int) -> float:
    """Seconds pipeline stage ``stage`` takes for one micro-batch, forward and backward."""
    first = stage == 0
    n_dense, n_moe = _stage_layers(f, lay, stage)
    t, b, ips = lay.tp, lay.micro_batch_size, f.images_flops
    seconds = _compute_seconds(f, lay, gpu, mfu, stage)
    passes = 6 if lay.recompute == "full" else 4  # collectives per layer: forward, backward (+ recomputed forward)
    if t > 1:
        tokens = (n_dense + n_moe) * f.seq * f.hidden + first * f.enc_layers * ips * f.enc_tokens * f.enc_hidden
        seconds += passes * b * tokens * 2 * 2 * (t - 1) / t / _bandwidth(gpu, lay, t)
    if lay.ep > 1 and n_moe:
        routed = n_moe * f.top_k * f.seq * f.hidden * 2
        seconds += passes * b * routed * (lay.ep - 1) / lay.ep / _bandwidth(gpu, lay, t * lay.ep)
    return seconds


def dp_sync_seconds(f: Facts, lay: ClusterLayout, gpu: GPU, mfu: float = DEFAULT_MFU) -> float:
    """Seconds the once-per-step gradient reduction (and weight all-gather) over the DP ranks adds
    to a step: all of it, or with parallel.overlap_grad_reduce what the last backward does not hide."""
    grad_bytes, gather_bytes = (4, 2) if lay.distributed_optimizer else (2 * 4, 0)
    seconds = 0.0
    for stage in sorted({0, lay.pp - 1}):
        dense, expert = _stage_params(f, lay, stage)
        groups = [
            (n, d, k) for n, d, k in ((dense, lay.dp, lay.tp), (expert, lay.dp // lay.ep, lay.tp * lay.ep)) if d > 1
        ]
        grads = sum(_collective_seconds(grad_bytes * n, d, k, lay, gpu) for n, d, k in groups)
        gather = sum(_collective_seconds(gather_bytes * n, d, k, lay, gpu) for n, d, k in groups)
        if lay.overlap_grad_reduce:  # hidden behind the backward (2/3 of the compute) of the last micro-batch
            grads = max(0.0, grads - 2 / 3 * _compute_seconds(f, lay, gpu, mfu, stage))
        seconds = max(seconds, grads + gather)
    return seconds


def evaluate(f: Facts, lay: ClusterLayout, gpu: GPU, mfu: float) -> tuple[Memory, int, float]:
    """(memory of the fuller stage, that stage, seconds per step) for a layout that divides."""
    stages = sorted({0, lay.pp - 1})
    memory = {s: stage_memory(f, lay, s) for s in stages}
    fullest = max(stages, key=lambda s: memory[s].total)
    slowest = max(stage_seconds(f, lay, gpu, mfu, s) for s in stages)
    return memory[fullest], fullest, (lay.micro_batches + lay.pp - 1) * slowest + dp_sync_seconds(f, lay, gpu, mfu)


@dataclass(frozen=True)
class Plan:
    """One layout of one run on one GPU model: memory per GPU, FLOPs and time per step."""

    cfg: RunConfig
    gpu: GPU
    layout: ClusterLayout
    memory: Memory  # the fuller of the first and last pipeline stage
    stage: int  # which stage that is
    flops: dict[str, float]  # flops.step_flops: one global batch
    step_seconds: float
    mfu: float  # assumed utilisation of the matmuls
    params: tuple[int, int]  # the model's (total, active) parameters

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.gpu.memory_gb

    @property
    def hours(self) -> float:
        """Estimated training time for train.steps steps."""
        return self.step_seconds * self.cfg.train.steps / 3600

    @property
    def mfu_effective(self) -> float:
        """Model FLOPs per second over the cluster's peak, after bubbles, recomputation and TP traffic."""
        return self.flops["total"] / (self.step_seconds * self.layout.world_size * self.gpu.bf16_tflops * 1e12)


def check_mfu(mfu: float) -> None:
    """An MFU is a fraction of the peak: above 0 (a step would take forever) and at most 1."""
    if isinstance(mfu, bool) or not (isinstance(mfu, int | float) and math.isfinite(mfu) and 0 < mfu <= 1):
        raise PlanError(f"--mfu {mfu} is not a utilisation: give a fraction of the peak in (0, 1], e.g. 0.31")


def plan_of(cfg: RunConfig, f: Facts, lay: ClusterLayout, gpu: GPU, mfu: float) -> Plan:
    memory, stage, seconds = evaluate(f, lay, gpu, mfu)
    return Plan(cfg, gpu, lay, memory, stage, f.step, seconds, mfu, (f.total, f.active))


def resolve_mfu(cfg: RunConfig, mfu: float | None) -> float:
    """``mfu``, or the config's parallel.plan_mfu when it is None; checked."""
    mfu = cfg.parallel.plan_mfu if mfu is None else mfu
    check_mfu(mfu)
    return mfu


def estimate(
    cfg: RunConfig, gpu: GPU | str, mfu: float | None = None, images_per_sequence: float | None = None
) -> Plan:
    """The plan of ``cfg``'s own layout on ``gpu``, fitting or not (:func:`mm1.plan.check` refuses);
    ``mfu`` None: the config's parallel.plan_mfu; parallel.recompute auto: :func:`resolve_recompute`."""
    gpu = find_gpu(gpu) if isinstance(gpu, str) else gpu
    mfu = resolve_mfu(cfg, mfu)
    cfg = resolve_recompute(cfg, gpu.memory_gb, images_per_sequence)
    return plan_of(cfg, facts(cfg, images_per_sequence), ClusterLayout.of(cfg), gpu, mfu)


# --- parallel.recompute auto, and the MFU bench/gpu_mfu.py measured ----------------------------------

RECOMPUTE_ORDER = ("none", "selective", "full")  # least recomputation (fastest) first


def least_recompute(cfg: RunConfig, memory_gb: float, images_per_sequence: float | None = None) -> str:
    """The least recomputation whose estimated memory per GPU (the fuller pipeline stage, overhead
    included) fits ``memory_gb`` for ``cfg``'s layout; full when none does (the planner's check
    then says what else to change)."""
    f, lay = facts(cfg, images_per_sequence), ClusterLayout.of(cfg)
    for rc in RECOMPUTE_ORDER:
        trial = replace(lay, recompute=rc)
        if max(stage_memory(f, trial, s).total for s in {0, lay.pp - 1}) <= memory_gb:
            return rc
    return "full"


def resolve_recompute(cfg: RunConfig, memory_gb: float | None, images_per_sequence: float | None = None) -> RunConfig:
    """``cfg`` with parallel.recompute auto replaced by :func:`least_recompute` for a GPU of ``memory_gb``
    (None: no GPU, e.g. a CPU run: none); any other value is returned unchanged. Call it before
    building a model (mm1.models.megatron_config.MegatronLayout refuses auto)."""
    if cfg.parallel.recompute != "auto":
        return cfg
    rc = "none" if memory_gb is None else least_recompute(cfg, memory_gb, images_per_sequence)
    return cfg.model_copy(update={"parallel": cfg.parallel.model_copy(update={"recompute": rc})})


LEVERS = ("fusions", "attention_backend", "compile_layers")  # parallel fields bench/gpu_mfu.py --levers measures


def measured_mfu(results: Iterable[dict], par: ParallelConfig, device: str = "H100") -> float | None:
    """The MFU bench/gpu_mfu.py measured (its JSON files, newest ``created`` first) on a GPU whose
    name contains ``device`` with ``par``'s levers (parallel.fusions, attention_backend,
    compile_layers) and recompute; None when none was. A run with --levers records each lever off and
    on and all of them on (``results.levers``), beside the levers-off run: a value for ``mm1 plan --mfu``."""
    want = {name: getattr(par, name) for name in LEVERS}
    runs = sorted(results, key=lambda r: r.get("created", ""), reverse=True)
    for data in runs:
        if data.get("dry_run") or device not in str(data.get("machine", {}).get("device", {}).get("name", "")):
            continue
        res = data.get("results", {})
        rows = [res.get("run", {}), *(row.get(side, {}) for row in res.get("levers", []) for side in ("on", "off"))]
        for row in rows:
            chosen = row.get("chosen", {})
            levers = {name: chosen.get(name, default) for name, default in _LEVER_DEFAULTS.items()}
            if row.get("mfu") and levers == want and chosen.get("recompute") == par.recompute:
                return float(row["mfu"])
    return None


def read_mfu_results(folder: Path) -> list[dict]:
    """Every gpu_mfu*.json in ``folder`` (bench/results), parsed."""
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("gpu_mfu*.json"))]


_LEVER_DEFAULTS = {name: ParallelConfig.model_fields[name].default for name in LEVERS}
