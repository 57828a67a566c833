"""Typed, validated configuration: one pydantic model per component, one source of truth."""

from mm1.config.data import DataConfig, MixtureConfig, SourceSpec, TokenizerConfig, WorldConfig
from mm1.config.eval import EvalConfig
from mm1.config.load import ConfigError, dump, from_dict, load
from mm1.config.model import (
    AimHeadConfig,
    ClipHeadConfig,
    ConnectorConfig,
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
    MoEConfig,
)
from mm1.config.run import RunConfig
from mm1.config.sft import SFTConfig
from mm1.config.train import ParallelConfig, TrainConfig

__all__ = [
    "AimHeadConfig",
    "ClipHeadConfig",
    "ConfigError",
    "ConnectorConfig",
    "DataConfig",
    "DecoderConfig",
    "EncoderConfig",
    "EvalConfig",
    "MixtureConfig",
    "ModelConfig",
    "MoEConfig",
    "ParallelConfig",
    "RunConfig",
    "SFTConfig",
    "SourceSpec",
    "TokenizerConfig",
    "TrainConfig",
    "WorldConfig",
    "dump",
    "from_dict",
    "load",
]
