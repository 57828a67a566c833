"""Run model-equality jobs under ``torchrun --nproc-per-node 2`` (not a pytest module).

    torchrun --standalone --nproc-per-node 2 tests/parallel/_equality_worker.py JOBS.json

JOBS.json is a list of ``{"name", "ckpt", "batch", "tp", "ep", "out"}``. For each job every rank
loads the checkpoint into a model built for the job's layout, takes its data-parallel share of the
batch (whole sequences with their images), and writes ``out/rank<r>.pt`` with:
- ``loss``: the SUM of its per-token losses (so losses and gradients add up over data-parallel ranks);
- ``logits``: its sequences' logits, gathered over TP (full vocabulary);
- ``grads``: every parameter's raw gradient after a plain ``backward()`` (no DDP wrapper), gathered
  over TP into the single-process shape, local experts renamed to their global expert index;
- ``experts``: the names of the expert parameters this rank owns.
The process group stays up across jobs; megatron's model-parallel groups are rebuilt per job.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import torch

from mm1.config import ParallelConfig
from mm1.models.megatron_config import MegatronLayout
from mm1.models.mm1_model import MM1Model
from mm1.parallel.setup import initialize, shutdown
from mm1.train import checkpoint

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import parallel_state
    from megatron.core.transformer.mlp import MLP
    from megatron.core.transformer.moe.moe_layer import MoELayer


def forward_backward(model: MM1Model, batch: dict) -> dict:
    """Logits (no grad), then the summed per-token loss and its backward; returns loss and logits."""
    model.train()
    with torch.no_grad():
        logits = model(batch["tokens"], batch["images"])
    loss = model(batch["tokens"], batch["images"], labels=batch["labels"]).sum()
    loss.backward()
    return {"loss": loss.detach().double(), "logits": logits}


def share(batch: dict, dp_rank: int, dp_size: int) -> dict:
    """This data-parallel rank's contiguous block of sequences and the images they hold."""
    per_rank = len(batch["tokens"]) // dp_size
    rows = slice(dp_rank * per_rank, (dp_rank + 1) * per_rank)
    first = [0, *torch.tensor(batch["images_per_sequence"]).cumsum(0).tolist()]
    images = batch["images"][first[rows.start] : first[rows.stop]]
    return {"tokens": batch["tokens"][rows], "labels": batch["labels"][rows], "images": images}


def _gather_tp(t: torch.Tensor, dim: int) -> list[torch.Tensor]:
    group = parallel_state.get_tensor_model_parallel_group()
    parts = [torch.empty_like(t) for _ in range(group.size())]
    torch.distributed.all_gather(parts, t.contiguous(), group=group)
    return parts


def full_grads(model: MM1Model) -> tuple[dict[str, torch.Tensor | None], list[str]]:
    """Gradients under single-process names and shapes, and the names of this rank's experts."""
    gated = {  # megatron stores a TP shard of a gated fc1 as [gate_r; up_r]: the full weight is [gates; ups]
        f"{name}.linear_fc1.{p}"
        for name, mod in model.named_modules()
        if isinstance(mod, MLP) and mod.config.gated_linear_unit
        for p in ("weight", "bias")
    }
    rename = {}  # "<moe>.experts.local_experts.<local>." -> "<moe>.experts.local_experts.<global>."
    for name, mod in model.named_modules():
        if isinstance(mod, MoELayer):
            for local, glob in enumerate(mod.local_expert_indices):
                rename[f"{name}.experts.local_experts.{local}."] = f"{name}.experts.local_experts.{glob}."
    pattern = re.compile("|".join(map(re.escape, rename))) if rename else None
    tp = parallel_state.get_tensor_model_parallel_world_size()
    grads, experts = {}, []
    for name, p in model.named_parameters():
        g = p.grad
        if g is not None and tp > 1 and getattr(p, "tensor_model_parallel", False):
            parts = _gather_tp(g, p.partition_dim)
            if name in gated:
                halves = [q.chunk(2, dim=0) for q in parts]
                g = torch.cat([h[0] for h in halves] + [h[1] for h in halves])
            else:
                g = torch.cat(parts, dim=p.partition_dim)
        if pattern is not None and pattern.match(name):
            name = pattern.sub(lambda m: rename[m.group(0)], name, count=1)
            experts.append(name)
        grads[name] = g
    return grads, experts


def run(job: dict) -> None:
    parallel = ParallelConfig(world_size=2, tp=job["tp"], ep=job["ep"])
    rank = initialize(parallel, seed=0)  # the weights come from the checkpoint, not from the seed
    try:
        meta = checkpoint.read_meta(Path(job["ckpt"]))
        model = MM1Model(
            meta["model"],
            vocab_size=meta["vocab_size"],
            image_token_id=meta["image_token_id"],
            layout=MegatronLayout(tp=job["tp"], ep=job["ep"]),
        )
        checkpoint.load_into(model, Path(job["ckpt"]))
        batch = share(torch.load(job["batch"]), rank.dp_rank, rank.dp_size)
        out = forward_backward(model, batch)
        out["logits"] = torch.cat(_gather_tp(out["logits"], -1), dim=-1)
        out["grads"], out["experts"] = full_grads(model)
        Path(job["out"]).mkdir(parents=True, exist_ok=True)
        torch.save(out, Path(job["out"]) / f"rank{rank.rank}.pt")
    finally:
        parallel_state.destroy_model_parallel()


def main(jobs_path: str) -> None:
    jobs = json.loads(Path(jobs_path).read_text())
    try:
        for job in jobs:
            run(job)
    except BaseException:
        shutdown(clean=False)
        raise
    shutdown()


if __name__ == "__main__":  # megatron's checkpoint workers re-import __main__
    main(sys.argv[1])
