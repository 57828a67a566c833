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
  mm1 builds with megatron's local spec: 16-bit activations, TP t, *no sequence parallelism* (mm1
  does not enable megatron's sequence_parallel, so norm and block inputs stay replicated on every
  TP rank). Per layer of s tokens, width h, a heads, in bytes:
      none       sbh (8 + (A + M)/t) + 6as^2b/t
      selective  sbh (8 + (A + M)/t)                (the attention core is recomputed)
      full       2sbh                               (the layer input; the layer is recomputed)
  8 replicated: both norms' inputs and outputs (the QKV and fc1 inputs). A, attention: the fused QKV
  output (6; the value view keeps it alive) and the projection's input (2), A = 8; with RoPE also
  the rotated Q and K and a RoPE intermediate, A = 14. M, the MLP, per token in units of h bytes:
  4f/h for GeLU and for megatron's fused quick-GELU (fc1 output, activation output), 10f/h for
  SwiGLU (the 2f-wide fc1 output and three f-wide tensors). 6as^2b/t: the fp32 softmax output and
  its bf16 copy (attention_softmax_in_fp32). mm1 trains without dropout: no masks. With dropout
  masks (+2 sbh, +as^2b), a bf16 softmax, no RoPE and a 4h GeLU MLP (M = 16) these terms give the
  paper's sbh (10 + 24/t + 5as/(ht)). A = 14 and M = 10f/h were measured: on an H100 the kept
  activations of mm1-ablation, mm1-3b and mm1-7b (the decoder alone and with 16 images, none and
  selective) are within 1% of these terms (bench/plan_memory.py, bench/results/plan_memory.json).
  Full recomputation adds one layer's "none" activations: the layer being recomputed (measured:
  the backward's peak is ~1 GB above that, left to the overhead). Transformer Engine (flash
  attention, fused norms), where installed, keeps less: no s^2 scores, so "none" costs about what
  "selective" does, and the plan is conservative. An MoE layer
  keeps each token's expert-MLP activations once per expert it visits (M x top_k) plus its
  dispatched copy and the router-weighted expert output (4 x top_k sbh, replicated; not measured).
  Grouped-query attention is counted as multi-head (not measured). The ViT uses the same terms per
  image (s = patches + class token) for data.mixture.max_images_per_sequence images per sequence;
  the connector's saved tensors are measured on the meta device (:mod:`mm1.plan.facts`).
  1F1B pipelining keeps min(pp - i, micro-batches) micro-batches in flight on stage i: pp on the
  first stage. The last stage also holds the logits of one micro-batch: bf16 and the fp32 copy of
  megatron's vocab-parallel cross entropy, 6 sbV/t bytes.
* overhead: 2 GB (CUDA context, cuBLAS and NCCL workspaces) + 10% of the rest (allocator
  fragmentation).

Time: each GPU runs its stage's share of the forward and backward (3 x forward FLOPs) plus what
recomputation redoes (selective: the attention scores and A.V, 4 s^2 h per layer; full: one more
forward of every layer) at ``mfu`` x the GPU's peak; the connector runs whole on every TP rank.
Communication, none of it overlapped with compute, at the GPU's bandwidths (:mod:`mm1.plan.gpus`),
for megatron's rank order tp-ep-dp-pp (a TP group is tp consecutive ranks, an EP group tp x ep, a
DP group tp x dp: a group stays on NVLink while it fits in a node):
* TP: 4 all-reduces per layer per micro-batch (6 under full recomputation) of 2sbh bytes;
* EP: 4 all-to-alls per MoE layer per micro-batch (6 under full) of the top_k copies of each
  token, 2 x top_k x sbh bytes, (ep - 1)/ep of which leave the GPU;
* DP, once per step (mm1's DDP does not overlap it with the backward): the fp32 gradients
  reduce-scattered and the bf16 weights all-gathered under the distributed optimizer, the fp32
  gradients all-reduced without it, (d - 1)/d x (4 + 2) or 2 (d - 1)/d x 4 bytes per parameter
  (experts over their dp / ep ranks).
A 1F1B step takes (micro-batches + pp - 1) x the slowest stage's time per micro-batch (the first
stage, which also runs the encoder, or the last, which runs the output layer), plus the DP sync.
Not modelled: pipeline sends (~2sbh per micro-batch per stage boundary), data loading, stragglers.
``mfu`` is therefore the utilisation of the matmuls themselves; ``Plan.mfu_effective`` is what is
left after bubbles, recomputation and communication (model FLOPs / (step time x GPUs x peak)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mm1.config import RunConfig
from mm1.plan.facts import Facts, facts
from mm1.plan.gpus import GPU, find_gpu
from mm1.plan.layout import Layout, PlanError

GB = 1e9
CONTEXT_GB = 2.0  # CUDA context, cuBLAS and NCCL workspaces
FRAGMENTATION = 0.10  # of everything else: the caching allocator's unusable blocks
DEFAULT_MFU = 0.4


@dataclass(frozen=True)
class Memory:
    """GB per GPU on one pipeline stage."""

    params: float  # bf16 weights + fp32 main copy
    grads: float  # fp32 grad buffer
    optimizer: float  # Adam m, v
    activations: float
    overhead: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + self.overhead


def layer_activations(
    s: int, b: float, h: int, a: int, t: int, recompute: str, attention: float, mlp: float, routed: int = 0
) -> float:
    """Bytes one transformer layer keeps for backward (module docstring): ``attention`` and ``mlp``
    are A and M, ``routed`` the top_k of an MoE layer (0: a dense layer)."""
    sbh = s * b * h
    if recompute == "full":
        return 2 * sbh
    kept = sbh * (8 + 4 * routed + (attention + mlp * max(routed, 1)) / t)
    if recompute == "none":
        kept += 6 * a * s * s * b / t
    return kept


def _stage_layers(f: Facts, lay: Layout, stage: int) -> tuple[int, int]:
    """(dense, MoE) decoder layers on pipeline stage ``stage``."""
    per = f.layers // lay.pp
    moe = sum(1 for i in range(stage * per, (stage + 1) * per) if i in f.moe_ids)
    return per - moe, moe


def stage_memory(f: Facts, lay: Layout, stage: int) -> Memory:
    """GB per GPU on pipeline stage ``stage`` (0 .. pp - 1)."""
    first, last = stage == 0, stage == lay.pp - 1
    n_dense, n_moe = _stage_layers(f, lay, stage)
    t, b, rc = lay.tp, lay.micro_batch_size, lay.recompute
    # parameters per GPU: non-expert (split over TP; the connector replicated) and expert (over TP x EP)
    split = n_dense * f.dense_layer + n_moe * f.moe_layer + first * (f.encoder + f.embedding) + last * f.head
    dense = split / t + first * f.connector
    expert = n_moe * f.experts / (t * lay.ep)
    shard_dense, shard_expert = (lay.dp, lay.dp // lay.ep) if lay.distributed_optimizer else (1, 1)
    sharded = dense / shard_dense + expert / shard_expert  # fp32 main copy and Adam states
    # activations of one micro-batch on this stage
    dec = layer_activations(f.seq, b, f.hidden, f.heads, t, rc, f.attention, f.mlp)
    dec_moe = layer_activations(f.seq, b, f.hidden, f.heads, t, rc, f.attention, f.mlp, f.top_k)
    enc = layer_activations(f.enc_tokens, b * f.images, f.enc_hidden, f.enc_heads, t, rc, f.enc_attention, f.enc_mlp)
    per_micro = n_dense * dec + n_moe * dec_moe
    if first:
        per_micro += f.enc_layers * enc + f.connector_bytes * b * f.images
    in_flight = min(lay.pp - stage, lay.micro_batches)
    activations = in_flight * per_micro + last * 6 * f.seq * b * f.vocab / t
    if rc == "full":  # the one layer being recomputed holds everything at once
        working = [
            layer_activations(f.seq, b, f.hidden, f.heads, t, "none", f.attention, f.mlp, f.top_k if n_moe else 0)
        ]
        if first:
            working.append(
                layer_activations(
                    f.enc_tokens, b * f.images, f.enc_hidden, f.enc_heads, t, "none", f.enc_attention, f.enc_mlp
                )
            )
        activations += max(working)
    parts = [2 * (dense + expert) + 4 * sharded, 4 * (dense + expert), 8 * sharded, activations]
    rest = sum(parts)
    return Memory(*(p / GB for p in parts), overhead=CONTEXT_GB + FRAGMENTATION * rest / GB)


def _bandwidth(gpu: GPU, lay: Layout, group_span: int) -> float:
    """Bytes/s of a collective among ranks spread over ``group_span`` consecutive ranks."""
    return (gpu.nvlink_gbps if group_span <= lay.gpus_per_node else gpu.network_gbps) * GB


def stage_seconds(f: Facts, lay: Layout, gpu: GPU, mfu: float, stage: int) -> float:
    """Seconds pipeline stage ``stage`` takes for one micro-batch, forward and backward."""
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
    seconds = b * (3 * forward + redo) / (t * rate) + first * b * ips * 3 * f.con_flops / rate
    passes = 6 if rc == "full" else 4  # collectives per layer: forward, backward (+ the recomputed forward)
    if t > 1:
        tokens = (n_dense + n_moe) * f.seq * f.hidden + first * f.enc_layers * ips * f.enc_tokens * f.enc_hidden
        seconds += passes * b * tokens * 2 * 2 * (t - 1) / t / _bandwidth(gpu, lay, t)
    if lay.ep > 1 and n_moe:
        routed = n_moe * f.top_k * f.seq * f.hidden * 2
        seconds += passes * b * routed * (lay.ep - 1) / lay.ep / _bandwidth(gpu, lay, t * lay.ep)
    return seconds


def dp_sync_seconds(f: Facts, lay: Layout, gpu: GPU) -> float:
    """Seconds of the once-per-step gradient reduction (and weight all-gather) over the DP ranks."""
    per_param = 4 + 2 if lay.distributed_optimizer else 2 * 4
    seconds = 0.0
    for stage in sorted({0, lay.pp - 1}):
        first, last = stage == 0, stage == lay.pp - 1
        n_dense, n_moe = _stage_layers(f, lay, stage)
        split = n_dense * f.dense_layer + n_moe * f.moe_layer + first * (f.encoder + f.embedding) + last * f.head
        groups = (
            (split / lay.tp + first * f.connector, lay.dp),
            (n_moe * f.experts / (lay.tp * lay.ep), lay.dp // lay.ep),
        )
        stage_s = sum(per_param * n * (d - 1) / d / _bandwidth(gpu, lay, lay.tp * lay.dp) for n, d in groups if d > 1)
        seconds = max(seconds, stage_s)
    return seconds


def evaluate(f: Facts, lay: Layout, gpu: GPU, mfu: float) -> tuple[Memory, int, float]:
    """(memory of the fuller stage, that stage, seconds per step) for a layout that divides."""
    stages = sorted({0, lay.pp - 1})
    memory = {s: stage_memory(f, lay, s) for s in stages}
    fullest = max(stages, key=lambda s: memory[s].total)
    slowest = max(stage_seconds(f, lay, gpu, mfu, s) for s in stages)
    return memory[fullest], fullest, (lay.micro_batches + lay.pp - 1) * slowest + dp_sync_seconds(f, lay, gpu)


@dataclass(frozen=True)
class Plan:
    """One layout of one run on one GPU model: memory per GPU, FLOPs and time per step."""

    cfg: RunConfig
    gpu: GPU
    layout: Layout
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
        raise PlanError(f"--mfu {mfu} is not a utilisation: give a fraction of the peak in (0, 1], e.g. 0.4")


def plan_of(cfg: RunConfig, f: Facts, lay: Layout, gpu: GPU, mfu: float) -> Plan:
    memory, stage, seconds = evaluate(f, lay, gpu, mfu)
    return Plan(cfg, gpu, lay, memory, stage, f.step, seconds, mfu, (f.total, f.active))


def estimate(
    cfg: RunConfig, gpu: GPU | str, mfu: float = DEFAULT_MFU, images_per_sequence: float | None = None
) -> Plan:
    """The plan of ``cfg``'s own layout on ``gpu``, fitting or not (:func:`mm1.plan.check` refuses)."""
    gpu = find_gpu(gpu) if isinstance(gpu, str) else gpu
    check_mfu(mfu)
    return plan_of(cfg, facts(cfg, images_per_sequence), Layout.of(cfg), gpu, mfu)
