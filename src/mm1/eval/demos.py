"""Which train-split examples stand in a few-shot prompt: seeded random draws, or RICES.

RICES (Yang et al. 2022, used by OpenFlamingo and in MM1's appendix) ranks the benchmark's train
images by cosine similarity to the query image and puts the most similar next to the query. Its
features come from one of two encoders:

* the evaluated model's own encoder (``eval.rices_encoder`` unset), so a model's demonstrations
  depend on the model;
* a fixed encoder (``eval.rices_encoder``: a checkpoint folder), the same for every evaluated
  model, as OpenFlamingo uses one CLIP ViT-L/14 for all its models. Then an encoder ablation
  (MM1 Table 1) does not also change its own demonstrations.

Features are the L2-normalised mean of the encoder's patch features, at the fixed encoder's own
image size.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mm1.config import EncoderConfig
from mm1.data.images import stack_images
from mm1.eval.benchmarks import Benchmark
from mm1.eval.context import EvalContext
from mm1.models.encoder import build_encoder, patch_features
from mm1.models.megatron_config import MegatronLayout
from mm1.train import checkpoint


@dataclass(frozen=True)
class FeatureEncoder:
    """An image encoder and its config: what RICES computes similarities with."""

    module: torch.nn.Module
    cfg: EncoderConfig


class _EncoderOnly(torch.nn.Module):
    """The ViT under the key ``encoder``, as every mm1 checkpoint stores it (multimodal, CLIP, AIM)."""

    def __init__(self, vit: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = vit

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None) -> dict:
        return self.encoder.sharded_state_dict(f"{prefix}encoder.", sharded_offsets, metadata)


def load_fixed_encoder(ckpt: Path, device: torch.device, layout: MegatronLayout | None = None) -> FeatureEncoder:
    """The image encoder of the mm1 checkpoint ``ckpt`` (an encoder stage's, a multimodal one, or
    ``mm1 import-hf --vision``'s), in eval mode, for RICES; built for ``layout`` (the evaluated
    model's: its tensor parallelism). ValueError when it does not load."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        what = "is a file" if ckpt.exists() else "does not exist"
        raise ValueError(
            f"eval.rices_encoder {ckpt} {what}: give a checkpoint folder with an image encoder "
            "(an encoder stage's checkpoint/, or mm1 import-hf --vision's)"
        )
    enc = checkpoint.read_meta(ckpt)["model"].encoder
    holder = _EncoderOnly(build_encoder(enc, layout or MegatronLayout()))
    try:
        checkpoint.load_into(holder, ckpt, parts=("encoder",))
    except ValueError as e:
        raise ValueError(f"eval.rices_encoder {ckpt}: its image encoder does not load ({e})") from None
    return FeatureEncoder(holder.encoder.to(device).eval(), enc)


def demo_order(ctx: EvalContext, bench: Benchmark, k_max: int, fixed: FeatureEncoder | None = None) -> list[list[int]]:
    """Per evaluated item, ``k_max`` pool indices; the k-shot prompt uses the last k of them.
    random: a seeded draw per (seed, benchmark, item); rices: ascending similarity, so the most
    similar demonstration stands next to the query (by ``fixed``'s features, else the model's own)."""
    if k_max == 0:
        return [[] for _ in bench.items]
    if len(bench.pool) < k_max:
        raise ValueError(
            f"{bench.name}: {k_max}-shot needs {k_max} demonstrations, the train split has {len(bench.pool)}"
        )
    if ctx.cfg.demos == "random":
        salt = zlib.crc32(bench.name.encode())
        return [
            [int(j) for j in np.random.default_rng([ctx.cfg.seed, salt, item.key]).choice(len(bench.pool), k_max, replace=False)]
            for item in bench.items
        ]  # fmt: skip
    encoder = fixed or FeatureEncoder(ctx.model.encoder, ctx.mc.encoder)
    query = features(encoder, [it.image for it in bench.items], ctx.device)
    pool = features(encoder, [it.image for it in bench.pool], ctx.device)
    top = torch.topk(query @ pool.T, k_max, dim=1).indices  # most similar first
    return [list(reversed(row)) for row in top.tolist()]


@torch.no_grad()
def features(encoder: FeatureEncoder, images: list[bytes], device: torch.device, chunk: int = 64) -> torch.Tensor:
    """L2-normalised mean patch features (N, hidden) of ``images`` at the encoder's image size."""
    out = []
    for start in range(0, len(images), chunk):
        x = stack_images(images[start : start + chunk], encoder.cfg.image_size).to(device)
        f = patch_features(encoder.module(x), encoder.cfg).float().mean(dim=1)
        out.append(torch.nn.functional.normalize(f, dim=-1))
    return torch.cat(out)
