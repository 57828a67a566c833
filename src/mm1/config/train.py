"""Config of training: parallel layout, optimisation, schedule, seed."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from mm1.config.base import Section, Seed


class ParallelConfig(Section):
    """Megatron parallel layout. The data-parallel size is derived: world_size / (tp * pp)."""

    world_size: int = Field(1, ge=1)
    """Number of training processes (GPUs on a cluster, gloo processes on CPU)."""
    tp: int = Field(1, ge=1)
    """Tensor-parallel size."""
    pp: int = Field(1, ge=1)
    """Pipeline-parallel size."""
    ep: int = Field(1, ge=1)
    """Expert-parallel size (MoE only); carved out of the data-parallel ranks."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend; auto picks nccl with CUDA, gloo without."""
    distributed_optimizer: bool = False
    """Shard optimizer state over data-parallel ranks (megatron's distributed optimizer, ZeRO-1)."""
    gpus_per_node: int | None = Field(None, ge=1)
    """Processes per node (GPUs per node on a cluster); None = all world_size processes on one node.
    Sizes SLURM jobs (`mm1 plan`); tensor parallelism should stay inside a node."""
    recompute: Literal["none", "selective", "full", "auto"] = "none"
    """Activation recomputation: none keeps every activation; selective recomputes the attention
    core (softmax, dropout, scores x values) in backward; full keeps only each layer's input and
    recomputes the whole layer (about one extra forward). Applies to the encoder and the decoder.
    With SDPA attention no scores are stored, so selective saves only the attention output
    (`mm1 plan` shows the memory of each). auto: the least recomputation whose `mm1 plan` memory
    estimate fits the GPU (none on a CPU), resolved by mm1.plan.estimate.resolve_recompute before
    the model is built (the MM1 paper is silent; megatron's selective/full are Korthikanti et al. 2022)."""
    sequence_parallel: bool = False
    """Megatron's sequence parallelism in the decoder (needs tp > 1): the norms, residuals and
    dropout work on 1/tp of the sequence each, so their activations are split over the TP ranks too;
    the TP all-reduces become reduce-scatters and all-gathers of the same volume. Encoders (the
    MM1 model's ViT, the CLIP and AIM pre-training stages) run without it, whatever this says."""
    overlap_grad_reduce: bool = False
    """Reduce gradients over the data-parallel ranks bucket by bucket during the backward (megatron
    DDP's overlap_grad_reduce) instead of in one pass after it. A planner-only option: `mm1 plan`
    estimates what it would hide, but training refuses it (see the error), so it must stay false."""
    fusions: bool = False
    """Megatron-core 0.16.1's fused kernels that need no Transformer Engine, on CUDA: bias + activation
    (SwiGLU; GeLU with biases), bias + dropout + residual add, the native vocab-parallel cross-entropy
    fusion, and masked softmax / gradient-accumulation / RoPE fusion where their apex or TE module is
    installed (mm1.models.megatron_config.FUSIONS). Ignored, with one warning, without CUDA. Off until
    bench/gpu_mfu.py --levers has measured it (the MM1 paper is silent on kernels)."""
    attention_backend: Literal["auto", "flash", "efficient", "cudnn", "math"] = "auto"
    """The SDPA kernel the core attention asks for first (torch.nn.attention.sdpa_kernel, the others
    as fallbacks for shapes it cannot take); auto: torch's own order. cudnn: cuDNN attention, an SDPA
    backend since PyTorch 2.5 for H100 and newer; efficient and cudnn are ignored, with one warning, on
    a CPU (mm1.models.attention). The paper is silent; Transformer Engine's attention ignores it."""
    compile_layers: bool = False
    """torch.compile each transformer layer of the decoder and the encoders (nn.Module.compile:
    the same state dict). Off by default: compiling costs minutes at paper size, paid back only on
    long runs (the paper and megatron are silent; bench/gpu_mfu.py --levers measures it)."""
    collective_timeout_minutes: float = Field(5, gt=0)
    """How long a rank waits in one collective before torch.distributed gives up (the process
    group's timeout; torch's own default is 10 min, NCCL's 10 min too). Ranks wait on each other
    where one works alone: rank 0 hashes the inputs while the others wait in a broadcast, and after
    a checkpoint save the fastest rank waits in a barrier for the slowest writer. At paper scale a
    save of a 30B model with its Adam state (~420 GB over all ranks) can take many minutes on a busy
    shared filesystem, so the paper presets raise this to 60; a too-short timeout kills a healthy
    run in its save, a too-long one only delays the report of a dead rank."""
    loader_workers: int = Field(0, ge=0)
    """DataLoader worker processes per training rank that read the packed file's blocks and decode and
    resize images ahead of the step (mm1.data.stream); 0 builds each micro-batch in the training
    process (the default: on 2 cores a worker only competes with training). On a GPU node give each
    rank 2-4 (bench/stream_loader.py: one core makes ~22 sequences/s at paper shapes, 3.4x the
    measured H100 rate). The batches are the same tensors whatever the number."""
    plan_mfu: float = Field(0.31, gt=0, le=1)
    """Utilisation of the matmuls that `mm1 plan` assumes for step times (training ignores it):
    model FLOPs per second over the GPU's dense BF16 peak. 0.31 was measured for mm1-ablation on one
    H100 80GB (bf16, seq 4096, 16 images, megatron's local spec with SDPA, recompute none,
    micro-batch 1: 30.7%; micro-batch 2 with selective recompute: 36.3%; bench/gpu_mfu.py,
    bench/results/gpu_mfu*.json). Other GPUs and Transformer Engine have not been measured; the MFU
    measured with other levers or recompute (bench/gpu_mfu.py --levers) is what
    mm1.plan.estimate.measured_mfu reads from those files."""

    @model_validator(mode="after")
    def _layout(self) -> ParallelConfig:
        if self.gpus_per_node is not None and self.world_size % self.gpus_per_node:
            raise ValueError(
                f"world_size={self.world_size} is not divisible by gpus_per_node={self.gpus_per_node}; "
                f"use a world_size that is a multiple of {self.gpus_per_node} (nodes x gpus_per_node) "
                "or set gpus_per_node to a divisor of world_size"
            )
        if self.world_size % (self.tp * self.pp):
            raise ValueError(
                f"world_size={self.world_size} is not divisible by tp*pp={self.tp * self.pp}; "
                f"use a world_size that is a multiple of {self.tp * self.pp}"
            )
        if self.sequence_parallel and self.tp == 1:
            raise ValueError(
                "sequence_parallel=true needs tp > 1 (it splits the sequence over the tensor-parallel ranks); "
                "set sequence_parallel=false or raise tp"
            )
        if self.overlap_grad_reduce:
            raise ValueError(
                "overlap_grad_reduce=true is not supported: megatron 0.16's DDP starts a bucket's reduction "
                "once each of its parameters has as many gradients as in the first step, and mm1's steps differ "
                "(a micro-batch without images gives the ViT and connector none), so it stops with 'Communication "
                "call has not been issued for this bucket'; set overlap_grad_reduce=false (`mm1 plan` models it only)"
            )
        if self.dp % self.ep:
            raise ValueError(
                f"ep={self.ep} must divide the data-parallel size world_size/(tp*pp)={self.dp} "
                "(experts are spread over data-parallel ranks)"
            )
        return self

    @property
    def dp(self) -> int:
        """Data-parallel size: world_size / (tp * pp)."""
        return self.world_size // (self.tp * self.pp)

    @property
    def nodes(self) -> int:
        """Nodes the run spans: world_size / gpus_per_node (1 when gpus_per_node is None)."""
        return 1 if self.gpus_per_node is None else self.world_size // self.gpus_per_node


class TrainConfig(Section):
    """Optimisation of one training stage."""

    seed: Seed = 1234
    """Fixes parameter init and data order: the same config gives the same loss curve."""
    steps: int = Field(500, ge=1)
    """Optimizer steps."""
    micro_batch_size: int = Field(8, ge=1)
    """Sequences per forward pass per data-parallel rank."""
    global_batch_size: int = Field(8, ge=1)
    """Sequences per optimizer step: micro_batch_size * dp * gradient-accumulation steps."""
    lr: float | None = Field(None, gt=0)
    """Peak learning rate; None = MM1's law exp(-0.4214 ln N - 0.5535) of the decoder's parameter
    count N (3B: 5.8e-5; see `mm1 presets`)."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final LR as a fraction of the peak (MM1: cosine to 10%)."""
    warmup_steps: int = Field(25, ge=0)
    """Linear warm-up steps (MM1: 2k)."""
    lr_decay: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay shape after warm-up."""
    weight_decay: float | None = Field(None, ge=0)
    """AdamW weight decay in torch/megatron terms: each step shrinks every weight matrix by
    weight_decay x lr(t) (biases and norms are not decayed). None = MM1's lambda = 0.1 x peak LR in
    the paper's decoupled convention (AXLearn; Loshchilov & Hutter Alg. 2: shrink lambda x lr(t) /
    peak LR), which is weight_decay = 0.1 here (docs/models.md, "Weight decay")."""
    adam_beta1: float = Field(0.9, gt=0, lt=1)
    """AdamW beta1."""
    adam_beta2: float = Field(0.95, gt=0, lt=1)
    """AdamW beta2."""
    clip_grad: float = Field(1.0, ge=0)
    """Gradient-norm clipping threshold (0 disables)."""
    log_interval: int = Field(10, ge=1)
    """Log loss and LR every this many steps."""
    save_interval: int = Field(0, ge=0)
    """Save a resumable checkpoint every this many steps (0: only at the end)."""
    save_every_minutes: float = Field(0, ge=0)
    """Also save a resumable checkpoint once this many minutes have passed since the last save (or
    the start); 0: off. Rank 0's clock decides and every rank saves after the same step (the
    decision is all-reduced with the stop flag). Bounds the work a node failure or a preemption
    without warning loses, whatever the step time."""
    stop_minutes_before_limit: float = Field(0, ge=0)
    """Inside a SLURM job with a time limit: stop after the first step that ends less than this many
    minutes before the limit (rank 0's clock, agreed by every rank), save, and exit 75, which
    requeues the job; 0: off (a job at its limit is killed and resumes from its last save). Set it
    above the longest save plus one step. mm1 watches the limit itself rather than asking SLURM for a
    ``--signal``, which cannot reach the training through Snakemake's job processes (docs/slurm.md)."""
    save_at_end: bool = True
    """Also save one after the last step, so that a run stopped while writing its outputs resumes
    there. The ablation scale turns it off: its runs take seconds to redo, less than the save costs."""
    keep_last: int = Field(2, ge=1)
    """Resumable checkpoints kept (the oldest are deleted once a newer one is complete)."""
    resume: bool = True
    """Continue from the newest complete checkpoint in ``<out>/resume`` (bit-exact on the same
    layout); false starts over and deletes that folder."""
    freeze: list[Literal["encoder", "connector", "decoder"]] = []
    """Parts of the model that are not trained (MM1: none; everything unfrozen)."""
    lr_mult: dict[Literal["encoder", "connector", "decoder"], Annotated[float, Field(gt=0)]] = {}
    """Peak and final LR of a part as a multiple of the run's (``{encoder: 0.1}``, > 0; ``freeze``
    stops a part); a part not named trains at the run's LR. MM1 is silent on per-part LRs; the study uses it to keep the image
    encoder's LR below its own pre-training LR, as MM1's law does at paper scale (docs/models.md)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Training precision: auto = bf16 on GPU, fp32 on CPU."""
    init_from: str | None = None
    """An mm1 checkpoint folder the stage starts from, before step 1 (a fresh start only; a resumed run
    has its own weights). ``mm1 train`` (the llm, multimodal and SFT stages) loads every part it holds:
    an ``mm1 import-hf`` checkpoint the imported ones (the decoder, the encoder), a train-stage
    checkpoint the whole model; ``mm1 encoder`` loads its encoder. The rest keeps its initialisation;
    ``--init*`` flags load after it. Made for ``OUT/checkpoint`` of ``mm1 import-hf`` (HF weights; use
    its config.yaml and tokenizer.json with it). Checked before training: it must exist and match the
    config's architecture and the tokenizer's vocabulary. None: no start."""

    @model_validator(mode="after")
    def _warmup(self) -> TrainConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be below steps={self.steps}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} is not a multiple of "
                f"micro_batch_size={self.micro_batch_size}"
            )
        return self
