"""Per-step training metrics: rows for metrics.csv, mirrored live in DVCLive's format, and MoE router statistics.

Rank 0 writes DVCLive's files: ``<out>/dvclive/metrics.json`` (the latest values, for ``dvc metrics
show`` / ``dvc exp show``) and ``<out>/dvclive/plots/metrics/<name>.tsv`` (one row per step, for
``dvc plots show``). A resumed run first cuts those files back to the checkpoint's step, so no step
appears twice.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import polars as pl
import torch

from mm1 import atomic

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.transformer.moe import moe_utils
    from megatron.core.transformer.moe.router import TopKRouter

DVCLIVE = "dvclive"
SUMMARY = "metrics.json"
HISTORY = Path("plots") / "metrics"


class MetricsLog:
    """The rows of steps 1..n (restored ones first); rank 0 also logs each new row in DVCLive's format.

    The files are DVCLive's (``dvc metrics show``, ``dvc plots show`` read them), written here so that a
    kill never leaves half of one: ``metrics.json`` is replaced by rename after each step, and each
    history row is one ``write`` to a file opened for appending, which a kill lands before or after.
    A fresh start removes an earlier run's files; a resumed one first cuts them back to its step.
    """

    def __init__(self, out_dir: Path, rows: list[dict], main: bool) -> None:
        self.rows = list(rows)
        self.folder = Path(out_dir) / DVCLIVE if main else None
        if self.folder is not None:
            if self.rows:
                _truncate(self.folder, self.rows[-1]["step"])
            else:
                for old in [self.folder / SUMMARY, *(self.folder / HISTORY).glob("*.tsv")]:
                    old.unlink(missing_ok=True)

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self.folder is None:
            return
        step = row["step"]
        for name, value in row.items():
            if name != "step":
                _append_row(self.folder / HISTORY / f"{name}.tsv", name, f"{step}\t{value!r}\n")
        summary = {name: value for name, value in row.items() if name != "step"} | {"step": step}
        atomic.write_text(self.folder / SUMMARY, json.dumps(summary, indent=4) + "\n")  # last: "step N is logged"

    def close(self) -> None:
        pass  # every row is on disk once append returns

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.rows)


def _append_row(tsv: Path, name: str, line: str) -> None:
    """Add one row to a history file (created with its header, atomically, if new), in one write."""
    if not tsv.is_file():
        atomic.write_text(tsv, f"step\t{name}\n")
    with open(tsv, "ab", buffering=0) as f:  # unbuffered: the row is a single write(2)
        f.write(line.encode())


def _truncate(folder: Path, step: int) -> None:
    """Drop the history rows after ``step`` (logged by a run that stopped before saving them)."""
    for tsv in (folder / HISTORY).rglob("*.tsv"):
        kept = pl.read_csv(tsv, separator="\t").filter(pl.col("step") <= step)
        atomic.write_with(tsv, lambda tmp, kept=kept: kept.write_csv(tmp, separator="\t"))  # a kill keeps the old one


class MoEStats:
    """Router statistics of one step: mean aux losses over MoE layers and the expert load imbalance.

    ``moe_load_imbalance`` is the largest expert's token count over the mean count (1 = balanced),
    averaged over MoE layers; counted by a hook on each router's routing map. Every rank calls
    :meth:`collect` after each step (it holds collectives).
    """

    def __init__(self, model: torch.nn.Module, num_layers: int, num_experts: int, n_micro: int) -> None:
        self.n_micro = n_micro
        self.counts = torch.zeros(num_layers, num_experts)  # (layers, experts) tokens routed this step
        for module in model.modules():
            if isinstance(module, TopKRouter):
                module.register_forward_hook(self._count)

    def _count(self, router, args, output) -> None:
        _, routing_map = output  # (tokens, experts) bool
        self.counts[router.layer_number - 1] += routing_map.sum(dim=0).float().cpu()

    def collect(self) -> dict[str, float]:
        counts = self.counts.to(_device())
        torch.distributed.all_reduce(counts)  # each token counted once per rank that routed it
        moe_mask = counts.sum(dim=1) > 0
        per_layer = counts[moe_mask].amax(dim=1) / counts[moe_mask].mean(dim=1)
        out = {"moe_load_imbalance": per_layer.mean().item()}
        self.counts.zero_()
        out.update(self._aux_losses(int(moe_mask.sum())))
        return out

    def _aux_losses(self, n_moe_layers: int) -> dict[str, float]:
        """megatron's aux-loss tracker, reduced over ranks as megatron logs it, per MoE layer and micro-batch."""
        tracker = moe_utils.get_moe_layer_wise_logging_tracker()
        names = sorted(tracker)
        # Every rank must hold the same losses to reduce them (a pipeline stage may have no MoE layer).
        held = torch.tensor([float(len(names))], device=_device())
        torch.distributed.all_reduce(held, op=torch.distributed.ReduceOp.MIN)
        if held.item() != len(names) or not names:
            moe_utils.clear_aux_losses_tracker()
            return {}
        moe_utils.reduce_aux_losses_tracker_across_ranks(names)
        scale = 1 / (max(n_moe_layers, 1) * self.n_micro)
        out = {f"moe_{name}": tracker[name]["values"].sum().item() * scale for name in names}
        moe_utils.clear_aux_losses_tracker()
        return out


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
