"""Evaluation jobs: the inference layout of a checkpoint and the SLURM job that runs it.

Memory per GPU at tensor parallelism t (GB = 1e9 bytes), for greedy decoding of micro-batches of
b = eval.micro_batch_size prompts of up to s = model.decoder.seq_length tokens:

* weights: ``BYTES`` per parameter, split over TP except the connector (replicated, as in training);
  no gradients, no optimizer state. ``BYTES`` = 4: the evaluation builds the model in fp32 today
  (:mod:`mm1.eval.harness`); in bf16 it would be 2, and so would the tensors below;
* KV cache: megatron's static cache, K and V of every decoder layer for b x s positions,
  2 x BYTES x layers x b x s x (query groups x head width) / t;
* working tensors: the prefill's logits, gathered over the vocabulary on every TP rank
  (b s V BYTES), and one layer's activations without recomputation (:func:`layer_activations`: the
  layers run one after another and keep nothing for a backward), for the decoder and for the
  b x eval.max_images images of the encoder;
* overhead: as in training (:data:`~mm1.plan.estimate.CONTEXT_GB` + 5%).

The layout: the smallest TP that fits (a divisor of the node's GPUs that divides the heads and MLP
widths; the model is never split over nodes, so no PP), then data-parallel ranks (each evaluates its
share of the batches, :mod:`mm1.eval.shard`) until the estimated time is under ``TARGET_HOURS``
or the node is full. Time, deliberately rough (the count of val items is not known before the
benchmarks exist): every (benchmark, shots) of generation runs ``eval.num_examples`` prompts
(``ITEMS_PER_BENCHMARK`` when 0, i.e. all), each a full-length prefill (2 x active parameters FLOPs
per token at the config's plan_mfu) and ``max_new_tokens`` decode steps that each read the
weights (:attr:`GPU.hbm_gbps`); likelihood scoring (``eval.likelihood``) adds one more full-length
forward per item and shot count. The runtime asked for is that x SAFETY + STARTUP_MINUTES, as for
training jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mm1.config import EvalConfig, ModelConfig, RunConfig
from mm1.models.size import count_model, padded_vocab_size
from mm1.plan.estimate import CONTEXT_GB, FRAGMENTATION, GB, layer_activations
from mm1.plan.facts import ATTENTION_KEPT, MLP_KEPT
from mm1.plan.gpus import GPU, find_gpu
from mm1.plan.layout import PlanError
from mm1.plan.search import MAX_MINUTES
from mm1.stages import STAGES

ITEMS_PER_BENCHMARK = 5000  # eval.num_examples 0 (every val item): about COCO's Karpathy test split
TARGET_HOURS = 4.0  # add data-parallel ranks until an evaluation job is estimated under this
SAFETY = 1.5
STARTUP_MINUTES = 20
HOST_MB_PER_GPU = 64_000  # as for training: decoded images, prompts, the checkpoint's shards in flight
CPUS_PER_TASK = 8
BYTES = 4  # per parameter and per activation element: fp32, as mm1.eval.harness builds the model


@dataclass(frozen=True)
class InferencePlan:
    """One evaluation job: tp x dp GPUs on one node, memory per GPU, estimated hours."""

    tp: int
    dp: int
    memory_gb: float
    hours: float

    @property
    def gpus(self) -> int:
        return self.tp * self.dp


def _tp_divides(mc: ModelConfig, tp: int) -> bool:
    dec, enc = mc.decoder, mc.encoder
    widths = (dec.num_attention_heads, dec.query_groups, dec.ffn_hidden_size, enc.num_attention_heads,
              enc.ffn_hidden_size)  # fmt: skip
    return all(w % tp == 0 for w in widths)


def inference_memory_gb(mc: ModelConfig, vocab_size: int, tp: int, micro_batch: int, images: int) -> float:
    """GB per GPU of greedy decoding at tensor parallelism ``tp`` (module docstring)."""
    dec, enc = mc.decoder, mc.encoder
    counts = count_model(mc, vocab_size)
    connector = counts["connector"].total
    weights = BYTES * ((counts["total"].total - connector) / tp + connector)
    head_width = dec.hidden_size // dec.num_attention_heads
    kv = 2 * BYTES * dec.num_layers * micro_batch * dec.seq_length * dec.query_groups * head_width / tp
    s, b, h, a = dec.seq_length, micro_batch, dec.hidden_size, dec.num_attention_heads
    mlp = MLP_KEPT[dec.activation] * dec.ffn_hidden_size / h
    layer = layer_activations(s, b, h, a, tp, "none", ATTENTION_KEPT["rope"], mlp)
    s_v = enc.grid**2 + int(enc.class_token)
    enc_mlp = MLP_KEPT[enc.activation] * enc.ffn_hidden_size / enc.hidden_size
    vit = layer_activations(s_v, b * images, enc.hidden_size, enc.num_attention_heads, tp, "none", 8, enc_mlp)
    logits = BYTES * b * s * padded_vocab_size(vocab_size)
    rest = weights + kv + logits + BYTES / 2 * max(layer, vit)  # layer_activations counts 16-bit tensors
    return (rest * (1 + FRAGMENTATION)) / GB + CONTEXT_GB


def inference_tp(mc: ModelConfig, vocab_size: int, memory_gb: float, gpus: int, micro_batch: int, images: int) -> int:
    """The smallest TP (dividing ``gpus`` and the model's widths) whose decoding fits ``memory_gb``."""
    for tp in (d for d in range(1, gpus + 1) if gpus % d == 0 and _tp_divides(mc, d)):
        if inference_memory_gb(mc, vocab_size, tp, micro_batch, images) <= memory_gb:
            return tp
    need = inference_memory_gb(mc, vocab_size, gpus, micro_batch, images)
    raise PlanError(
        f"evaluating this {mc.decoder.num_layers}-layer model needs {need:.1f} GB per GPU even at tp={gpus} "
        f"({memory_gb:g} GB available): lower eval.micro_batch_size or use GPUs with more memory"
    )


def _hours(mc: ModelConfig, vocab_size: int, ev: EvalConfig, gpu: GPU, tp: int, mfu: float, sft: bool) -> float:
    """Estimated hours of the whole evaluation on one data-parallel rank of ``tp`` GPUs."""
    counts = count_model(mc, vocab_size)
    shots = 1 if sft else len(ev.shots)
    prompts = len(ev.benchmarks) * shots * (ev.num_examples or ITEMS_PER_BENCHMARK)
    forwards = prompts + (len(ev.benchmarks) * shots * ITEMS_PER_BENCHMARK if ev.likelihood and not sft else 0)
    flops = forwards * mc.decoder.seq_length * 2 * counts["total"].active
    compute = flops / (tp * gpu.bf16_tflops * 1e12 * mfu)
    new_tokens = max(ev.captioning.max_new_tokens, ev.vqa.max_new_tokens)
    steps = math.ceil(prompts / ev.micro_batch_size) * new_tokens
    decode = steps * BYTES * counts["total"].active / tp / (gpu.hbm_gbps * GB)
    return (compute + decode) / 3600


def plan_inference(run: RunConfig, ev: EvalConfig, gpu: GPU | str, sft: bool = False) -> InferencePlan:
    """The evaluation layout of ``run``'s model (its model, tokenizer and parallel sections) on ``gpu``."""
    gpu = find_gpu(gpu) if isinstance(gpu, str) else gpu
    mc, vocab = run.model, run.tokenizer.vocab_size
    node = run.parallel.gpus_per_node or gpu.gpus_per_node
    images = ev.max_images
    tp = inference_tp(mc, vocab, gpu.memory_gb, node, ev.micro_batch_size, images)
    hours = _hours(mc, vocab, ev, gpu, tp, run.parallel.plan_mfu, sft)
    dp = 1
    while hours / dp > TARGET_HOURS and tp * dp * 2 <= node:
        dp *= 2
    return InferencePlan(tp, dp, inference_memory_gb(mc, vocab, tp, ev.micro_batch_size, images), hours / dp)


def checkpoint_stage(stage: str) -> str:
    """The stage whose checkpoint an inference stage runs: its ``--checkpoint`` input (:mod:`mm1.stages`);
    that stage's config holds the model, tokenizer and cluster sections the plan reads."""
    return next(i.stage for i in STAGES[stage].inputs if i.option == "--checkpoint")


def inference_resources(run: RunConfig, ev: EvalConfig, gpu: str, sft: bool = False) -> dict[str, int]:
    """SLURM resources of one evaluation job (the keys of :func:`mm1.plan.job_resources`, one node)."""
    plan = plan_inference(run, ev, gpu, sft)
    return {
        "nodes": 1,
        "tasks": plan.gpus,
        "tasks_per_node": plan.gpus,
        "gpus_per_node": plan.gpus,
        "cpus_per_task": CPUS_PER_TASK,
        "mem_mb": plan.gpus * HOST_MB_PER_GPU,
        "runtime": min(math.ceil(plan.hours * 60 * SAFETY + STARTUP_MINUTES), MAX_MINUTES),
    }
