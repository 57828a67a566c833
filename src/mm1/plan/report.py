"""Plans as text: one plan in detail (`mm1 plan --preset`), several as a Markdown table (`--all`)."""

from __future__ import annotations

from mm1.plan.estimate import Plan
from mm1.plan.layout import overrides


def _layout_line(plan: Plan) -> str:
    lay = plan.layout
    return (
        f"TP {lay.tp}, PP {lay.pp}, EP {lay.ep}, DP {lay.dp}; micro-batch {lay.micro_batch_size} x "
        f"{lay.micro_batches} accumulation x DP {lay.dp} = global batch {lay.global_batch_size}; "
        f"recompute {lay.recompute}; distributed optimizer {_on(lay.distributed_optimizer)}; "
        f"sequence parallel {_on(lay.sequence_parallel)}; overlapped gradient reduction {_on(lay.overlap_grad_reduce)}"
    )


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def describe(plan: Plan) -> str:
    """The layout, the memory per GPU by kind, and the step's FLOPs and time."""
    lay, mem, gpu, fl = plan.layout, plan.memory, plan.gpu, plan.flops
    stage = f"pipeline stage {plan.stage} of {lay.pp}" if lay.pp > 1 else "one pipeline stage"
    shard = f"/ DP {lay.dp}" if lay.distributed_optimizer else "unsharded"
    lines = [
        f"{plan.cfg.name} on {gpu.name}: {lay.nodes} node(s) x {lay.gpus_per_node} GPUs = {lay.world_size}",
        f"layout: {_layout_line(plan)}",
        f"memory per GPU, GB ({stage}):",
        f"  parameters   {mem.params:7.1f}   bf16 weights 2 B + fp32 main copy 4 B {shard}",
        f"  gradients    {mem.grads:7.1f}   fp32 grad buffer 4 B",
        f"  optimizer    {mem.optimizer:7.1f}   Adam m, v 8 B {shard}",
        f"  activations  {mem.activations:7.1f}   {min(lay.pp - plan.stage, lay.micro_batches)} micro-batch(es) in flight",
        f"  (optimizer step {mem.step_temporaries:5.1f}   fp32 temporaries of AdamW, when activations are freed)",
        f"  overhead     {mem.overhead:7.1f}   CUDA context + fragmentation",
        f"  total        {mem.total:7.1f}   of {gpu.memory_gb:g} ({'fits' if plan.fits else 'does NOT fit'})",
        f"step: {fl['total']:.3e} FLOPs (forward: encoder {fl['encoder']:.2e}, connector {fl['connector']:.2e}, "
        f"decoder {fl['decoder']:.2e}; x3 with backward)",
        f"time: {plan.step_seconds:.2f} s per step at MFU {plan.mfu:.2f} (effective {plan.mfu_effective:.2f}); "
        f"{plan.cfg.train.steps} steps = {plan.hours:.1f} h = {plan.hours / 24:.1f} days",
        "as overrides: " + " ".join(f"--set {o}" for o in overrides(lay)),
    ]
    return "\n".join(lines) + "\n"


HEADER = (
    "| preset | params (active) | nodes x GPUs | TP | PP | EP | DP | micro x accum | recompute | SP | overlap "
    "| params GB | grads GB | optim GB | activ. GB | total GB | step PFLOP | s/step | eff. MFU | hours |"
)


def table(plans: list[Plan]) -> str:
    """A Markdown table, one row per plan."""
    rows = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    for p in plans:
        lay, mem = p.layout, p.memory
        over = "" if p.fits else f" > {p.gpu.memory_gb:g}"
        params = f"{p.params[0] / 1e9:.2f}B" + (f" ({p.params[1] / 1e9:.2f}B)" if p.params[1] != p.params[0] else "")
        rows.append(
            f"| {p.cfg.name} | {params} | {lay.nodes} x {lay.gpus_per_node} | {lay.tp} | {lay.pp} | {lay.ep} "
            f"| {lay.dp} | {lay.micro_batch_size} x {lay.micro_batches} | {lay.recompute} | {_on(lay.sequence_parallel)} "
            f"| {_on(lay.overlap_grad_reduce)} | {mem.params:.1f} "
            f"| {mem.grads:.1f} | {mem.optimizer:.1f} | {mem.activations:.1f} | {mem.total:.1f}{over} "
            f"| {p.flops['total'] / 1e15:.1f} | {p.step_seconds:.2f} | {p.mfu_effective:.2f} | {p.hours:.0f} |"
        )
    return "\n".join(rows) + "\n"
