"""Data jobs sized from their data: memory and time of ``pack``, ``sft_pack``, ``tokenizer`` and ``acquire``.

A stage's registry entry says what it scales with (``Stage.scales_with``, :mod:`mm1.stages`):

* ``"sequences"`` (the packers of pre-training data): N = train.steps x train.global_batch_size
  sequences, each of model.decoder.seq_length tokens (``TOKEN_BYTES`` per token: ids, labels and
  mask) and up to data.mixture.max_images_per_sequence images of ``IMAGE_BYTES_PER_PIXEL`` x
  model.encoder.image_size^2 encoded bytes (a JPEG at 336 px: ~34 KB);
* ``"sources"`` (the stages that read the sources whole: acquire, tokenizer, sft_pack): the bytes
  of data.sources (each source's ``bytes``, or its ``max_bytes`` cap when not declared); the
  built-in world (data.source=world) is small and keeps the registry's constants.

Time: the bytes at ``BYTES_PER_SECOND`` (one process: read, decode, tokenise, write; the miniature
pack of 4,000 x 256-token sequences, ~25 MB in memory, took 1.1 s of its 3.1 s wall time beyond the
interpreter's start, benchmarks/pack/base.tsv) x SAFETY + STARTUP_MINUTES. Memory: what the job holds
besides its bytes streamed through, ``INDEX_BYTES`` per sequence (the draw's sources, offsets and
lengths) plus ``BUFFER_MB`` of output in flight; the packed data itself is written as it is made
(the sharded packer of issue 25, item 1). The tokenizer's trainer keeps its word counts,
``TOKENIZER_MEMORY`` x the text it reads. Neither ever goes below the registry's own ``mem_mb`` and
``runtime``, so the miniature study's jobs keep those.
"""

from __future__ import annotations

import math

from mm1.config import RunConfig
from mm1.plan.search import MAX_MINUTES

TOKEN_BYTES = 8
IMAGE_BYTES_PER_PIXEL = 0.3  # encoded RGB, ~10:1 JPEG
BYTES_PER_SECOND = 25e6
SAFETY = 1.5
STARTUP_MINUTES = 10
INDEX_BYTES = 64
BUFFER_MB = 2000
TOKENIZER_MEMORY = 0.5


def sequences(cfg: RunConfig) -> int:
    """Pre-training sequences the run draws: train.steps x train.global_batch_size."""
    return cfg.train.steps * cfg.train.global_batch_size


def sequence_bytes(cfg: RunConfig) -> float:
    """Bytes of one packed sequence: its tokens and its images (module docstring)."""
    image = IMAGE_BYTES_PER_PIXEL * cfg.model.encoder.image_size**2
    return cfg.model.decoder.seq_length * TOKEN_BYTES + cfg.data.mixture.max_images_per_sequence * image


def source_bytes(cfg: RunConfig) -> int:
    """Bytes of the acquired sources (0 for the built-in world)."""
    if cfg.data.source != "acquired":
        return 0
    return sum(s.bytes or s.max_bytes for s in cfg.data.sources)


def data_resources(scales_with: str, cfg: RunConfig, mem_mb: int, runtime: int, tokenizer: bool = False) -> dict:
    """SLURM mem_mb and runtime (minutes) of a data job; never below the registry's ``mem_mb``/``runtime``."""
    if scales_with == "sequences":
        n = sequences(cfg)
        data, held = n * sequence_bytes(cfg), n * INDEX_BYTES / 1e6 + BUFFER_MB
    elif scales_with == "sources":
        data = source_bytes(cfg)
        held = BUFFER_MB + (TOKENIZER_MEMORY * data / 1e6 if tokenizer else 0) if data else 0
    else:
        raise ValueError(f"Stage.scales_with={scales_with!r}: use 'sequences', 'sources' or ''")
    minutes = STARTUP_MINUTES + SAFETY * data / BYTES_PER_SECOND / 60 if data else 0
    return {"mem_mb": max(mem_mb, math.ceil(held)), "runtime": min(max(runtime, math.ceil(minutes)), MAX_MINUTES)}
