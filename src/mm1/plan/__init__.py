"""Cluster layouts: will a run fit on a GPU, how long will it take, and what SLURM job does it need.

* :mod:`~mm1.plan.gpus`     -- the GPU catalogue (h100-80gb, h200-141gb, a100-80gb, a100-40gb);
* :mod:`~mm1.plan.layout`   -- a layout (parallel section + batch split) and the rules it must obey;
* :mod:`~mm1.plan.facts`    -- the model's parameters, FLOPs and activation shapes, split by stage;
* :mod:`~mm1.plan.estimate` -- memory per GPU and time per step of one layout (formulas documented there);
* :mod:`~mm1.plan.search`   -- check a config's layout, search the fastest on N nodes, size a SLURM job;
* :mod:`~mm1.plan.report`   -- text and Markdown output of `mm1 plan`.
"""

from mm1.plan.estimate import DEFAULT_MFU, Memory, Plan, estimate
from mm1.plan.gpus import GPU, GPUS, find_gpu
from mm1.plan.layout import ClusterLayout, PlanError
from mm1.plan.report import describe, table
from mm1.plan.search import check, choose, job_resources

# The paper's models, whose presets carry a cluster layout (`mm1 plan --all`).
PAPER_PRESETS = ("mm1-ablation", "mm1-3b", "mm1-7b", "mm1-30b", "mm1-3b-moe", "mm1-7b-moe")

__all__ = [
    "DEFAULT_MFU",
    "GPU",
    "GPUS",
    "PAPER_PRESETS",
    "ClusterLayout",
    "Memory",
    "Plan",
    "PlanError",
    "check",
    "choose",
    "describe",
    "estimate",
    "find_gpu",
    "job_resources",
    "table",
]
