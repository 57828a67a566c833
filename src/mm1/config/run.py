"""The whole run: every section, plus cross-section checks."""

from __future__ import annotations

from pydantic import Field, model_validator

from mm1.config.base import FILE_NAME, Section
from mm1.config.data import DataConfig, TokenizerConfig, WorldConfig
from mm1.config.eval import EvalConfig
from mm1.config.model import ModelConfig
from mm1.config.sft import SFTConfig
from mm1.config.study import StudyConfig
from mm1.config.train import ParallelConfig, TrainConfig


class RunConfig(Section):
    """One MM1 run: data, tokenizer, model, layout, training and evaluation."""

    name: str = Field("mm1-tiny", pattern=FILE_NAME)
    """Run name, used in logs and provenance (letters, digits, _ . -; not starting with . or -)."""
    world: WorldConfig = WorldConfig()
    """The synthetic MM1 world (data source of the miniature study)."""
    data: DataConfig = DataConfig()
    """Where pre-training data comes from and how it is mixed and packed."""
    tokenizer: TokenizerConfig = TokenizerConfig()
    """BPE tokenizer."""
    model: ModelConfig = ModelConfig()
    """The MM1 model."""
    parallel: ParallelConfig = ParallelConfig()
    """Parallel layout of training."""
    train: TrainConfig = TrainConfig()
    """Training."""
    eval: EvalConfig = EvalConfig()
    """Evaluation."""
    sft: SFTConfig = SFTConfig()
    """How instruction conversations become SFT sequences (chat template, image splitting)."""
    study: StudyConfig = StudyConfig()
    """The experiments (override sets) the workflow runs and the figures that compare them."""

    @model_validator(mode="after")
    def _cross(self) -> RunConfig:
        par, dec, moe = self.parallel, self.model.decoder, self.model.moe
        for name, heads in (("decoder", dec.num_attention_heads), ("encoder", self.model.encoder.num_attention_heads)):
            if heads % par.tp:
                raise ValueError(f"parallel.tp={par.tp} must divide model.{name}.num_attention_heads={heads}")
        # Each tensor-parallel rank holds an equal share of these widths (megatron asserts it deep inside
        # the model build otherwise); mm1.plan.layout.problems checks the same for the planner.
        shares = [
            ("decoder.num_query_groups", dec.query_groups),
            ("decoder.ffn_hidden_size", dec.ffn_hidden_size),
            ("encoder.ffn_hidden_size", self.model.encoder.ffn_hidden_size),
        ]
        for name, value in shares:
            if value % par.tp:
                raise ValueError(f"parallel.tp={par.tp} must divide model.{name}={value}; use a divisor of {value}")
        if par.gpus_per_node is not None and par.gpus_per_node % par.tp:
            raise ValueError(
                f"parallel.tp={par.tp} must divide parallel.gpus_per_node={par.gpus_per_node}: tensor "
                "parallelism stays inside a node; lower parallel.tp"
            )
        if dec.num_layers % par.pp:
            raise ValueError(f"parallel.pp={par.pp} must divide model.decoder.num_layers={dec.num_layers}")
        if par.ep > 1 and not moe.enabled:
            raise ValueError(f"parallel.ep={par.ep} needs an MoE decoder: set model.moe.num_experts")
        if moe.enabled and moe.num_experts % par.ep:
            raise ValueError(f"parallel.ep={par.ep} must divide model.moe.num_experts={moe.num_experts}")
        per_step = self.train.micro_batch_size * par.dp
        if self.train.global_batch_size % per_step:
            raise ValueError(
                f"train.global_batch_size={self.train.global_batch_size} must be a multiple of "
                f"micro_batch_size*dp={per_step} (train.micro_batch_size={self.train.micro_batch_size} x dp, "
                f"where dp = parallel.world_size / (parallel.tp x parallel.pp) = {par.world_size}/({par.tp}x{par.pp}) "
                f"= {par.dp})"
            )
        return self
