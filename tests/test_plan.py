"""The layout planner: memory and time arithmetic, refusals that name the fix, the search, the CLI, SLURM sizing."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from mm1.cli import main
from mm1.config import ParallelConfig, RunConfig, load
from mm1.config.presets import load_preset
from mm1.plan import GPUS, PAPER_PRESETS, ClusterLayout, PlanError, check, choose, estimate, find_gpu, job_resources
from mm1.plan.estimate import plan_of
from mm1.plan.facts import facts
from mm1.plan.layout import apply, problems
from mm1.plan.search import HOST_MB_PER_GPU, MAX_MINUTES, SAFETY, STARTUP_MINUTES

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
H100 = find_gpu("h100-80gb")

# A small model whose numbers are worked out by hand below: decoder 4 x 256 (4 heads, GeLU MLP 1024,
# sequences of 512), ViT 2 x 64 on a 4 x 4 patch grid, avg-pool connector to 4 tokens, 2 images per
# sequence, vocabulary 1000 -> 1024, one sequence per micro-batch.
SMALL = [
    "tokenizer.vocab_size=1000",
    "model.decoder.num_layers=4",
    "model.decoder.hidden_size=256",
    "model.decoder.num_attention_heads=4",
    "model.decoder.ffn_hidden_size=1024",
    "model.decoder.activation=gelu",
    "model.decoder.seq_length=512",
    "model.encoder.image_size=32",
    "model.encoder.patch_size=8",
    "model.encoder.hidden_size=64",
    "model.encoder.num_layers=2",
    "model.encoder.num_attention_heads=4",
    "model.encoder.ffn_hidden_size=256",
    "model.connector.kind=avg_pool",
    "model.connector.num_tokens=4",
    "data.mixture.max_images_per_sequence=2",
    "train.micro_batch_size=1",  # of the default global batch of 8
]
# Parameters: a decoder layer = attention 4 x 256^2 + MLP 2 x 256 x 1024 + 2 RMSNorms 2 x 256;
# embedding 1024 x 256; final norm 256 + output layer 1024 x 256. The ViT (conv 3 x 8^2 x 64, 16
# positions x 64, ln_pre 128, 2 layers of 49,984) = 113,408 and the connector (64 x 256 + 256) as size.py counts.
LAYER = 4 * 256**2 + 2 * 256 * 1024 + 2 * 256  # 786,944
EMBEDDING = 1024 * 256
HEAD = 256 + 1024 * 256
ENCODER = (
    3 * 8**2 * 64 + 16 * 64 + 2 * 64 + 2 * (2 * 2 * 64 + 3 * 64 * 64 + 3 * 64 + 64 * 64 + 64 + 2 * 64 * 256 + 256 + 64)
)
CONNECTOR = 64 * 256 + 256
# The connector keeps, per image, its pool's input (64 x 4 x 4) and its linear's input (4 x 64), in bf16.
CONNECTOR_SAVED = 2 * (64 * 4 * 4 + 4 * 64)


def _small(*overrides: str) -> RunConfig:
    return load(None, [*SMALL, *overrides])


def test_memory_of_a_small_layout_by_hand() -> None:
    # 2 nodes x 4 GPUs; TP 2 x PP 2 -> DP 2; 16 = micro 2 x 4 accumulation x DP 2; selective
    cfg = _small(
        "parallel.world_size=8",
        "parallel.gpus_per_node=4",
        "parallel.tp=2",
        "parallel.pp=2",
        "parallel.recompute=selective",
        "parallel.distributed_optimizer=true",
        "train.micro_batch_size=2",
        "train.global_batch_size=16",
    )
    plan = estimate(cfg, H100)
    # first stage: layers 0-1, ViT, connector (replicated over TP), embedding; the rest split over TP 2
    on_gpu = (2 * LAYER + ENCODER + EMBEDDING) / 2 + CONNECTOR
    sharded = on_gpu / 2  # fp32 main copy and Adam over DP 2
    params, grads, adam = 2 * on_gpu + 4 * sharded, 4 * on_gpu, 8 * sharded
    # selective, TP 2, no sequence parallelism: sbh (8 + (A + M)/2) per layer, s=512, b=2; the
    # decoder's attention with RoPE keeps A = 14, the ViT's A = 8; a GeLU MLP of 4h keeps M = 4f/h = 16
    decoder = 2 * (512 * 2 * 256 * (8 + (14 + 16) / 2))
    vit = 2 * (16 * (2 * 2) * 64 * (8 + (8 + 16) / 2))  # 2 layers, s = 16 patches, b = 2 sequences x 2 images
    connector = CONNECTOR_SAVED * 2 * 2
    activations = 2 * (decoder + vit + connector)  # 1F1B: pp = 2 micro-batches in flight on stage 0
    rest = params + grads + adam + activations
    assert plan.stage == 0  # the last stage (2 layers + head, 1 micro-batch + logits 6 sbV/t) holds less
    assert plan.memory.params == pytest.approx(params / GB)
    assert plan.memory.grads == pytest.approx(grads / GB)
    assert plan.memory.optimizer == pytest.approx(adam / GB)
    assert plan.memory.activations == pytest.approx(activations / GB)
    assert plan.memory.overhead == pytest.approx(3 + 0.05 * rest / GB)
    assert plan.memory.total == pytest.approx(3 + 1.05 * rest / GB)
    assert plan.params == (ENCODER + CONNECTOR + EMBEDDING + HEAD + 4 * LAYER,) * 2


def test_memory_without_recomputation_and_with_full_recomputation_by_hand() -> None:
    sbh, vit_sbh = 512 * 1 * 256, 16 * 2 * 64  # one sequence with 2 images
    logits = 6 * 512 * 1024
    rest = 2 * CONNECTOR_SAVED + logits
    # none: SDPA keeps no s x s scores, only its output (2 sbh) and the fp32 log-sum-exp (4 as b)
    dec_none = sbh * (8 + 14 + 16 + 2) + 4 * 4 * 512
    vit_none = vit_sbh * (8 + 8 + 16 + 2) + 4 * 4 * 16 * 2
    none = 4 * dec_none + 2 * vit_none + rest
    full = 4 * 2 * sbh + 2 * 2 * vit_sbh + rest + dec_none  # + the layer being recomputed
    assert estimate(_small(), H100).memory.activations == pytest.approx(none / GB)
    assert estimate(_small("parallel.recompute=full"), H100).memory.activations == pytest.approx(full / GB)
    # without the distributed optimizer every rank keeps 2 + 4 + 4 + 8 = 18 bytes per parameter
    one = estimate(_small(), H100).memory
    assert one.params + one.grads + one.optimizer == pytest.approx(
        18 * (ENCODER + CONNECTOR + EMBEDDING + HEAD + 4 * LAYER) / GB
    )


def test_step_time_is_flops_over_peak_plus_the_gradient_sync() -> None:
    mfu = ParallelConfig().plan_mfu  # the config's, when the caller names none
    rate = H100.bf16_tflops * 1e12 * mfu
    one = estimate(_small(), H100)  # 1 GPU: nothing but compute
    assert one.step_seconds == pytest.approx(one.flops["total"] / rate)
    assert one.hours == pytest.approx(one.step_seconds * 500 / 3600)
    assert one.mfu_effective == pytest.approx(mfu)
    assert estimate(_small("parallel.plan_mfu=0.5"), H100).mfu_effective == pytest.approx(0.5)
    assert estimate(_small("parallel.plan_mfu=0.5"), H100, mfu=0.25).mfu_effective == pytest.approx(0.25)
    # 2 GPUs on a node, DP 2, no distributed optimizer: half the compute + an all-reduce of the
    # fp32 gradients, 2 (d-1)/d x 4 bytes per parameter over NVLink
    two = estimate(_small("parallel.world_size=2"), H100)
    n = ENCODER + CONNECTOR + EMBEDDING + HEAD + 4 * LAYER
    sync = 2 * 0.5 * 4 * n / (H100.nvlink_gbps * GB)
    assert two.step_seconds == pytest.approx(one.flops["total"] / (2 * rate) + sync)
    # full recomputation redoes one forward of the layers: 4/3 of their compute
    full = estimate(_small("parallel.recompute=full"), H100)
    assert full.step_seconds > one.step_seconds * 1.2


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_every_paper_preset_has_a_layout_that_fits_on_h100(name: str) -> None:
    cfg = load_preset(name)
    plan = check(cfg, "h100-80gb")
    par, tr = cfg.parallel, cfg.train
    assert plan.fits and plan.memory.total <= 80
    assert par.gpus_per_node == 8 and par.world_size == par.nodes * 8 and par.distributed_optimizer
    assert (tr.global_batch_size, tr.steps, cfg.model.decoder.seq_length) == (512, 200_000, 4096)
    assert cfg.data.mixture.max_images_per_sequence == 16
    assert plan.layout == ClusterLayout.of(cfg)


def _apply_fix(cfg: RunConfig, fix: str) -> RunConfig:
    """'set a.b=v' / 'raise a.b to v' / 'lower a.b to v' -> cfg with that override."""
    match = re.fullmatch(r"set (\S+)=(\S+)", fix) or re.fullmatch(r"(?:raise|lower) (\S+) to (\S+)", fix)
    field, value = match.groups()
    section, key = field.split(".")
    data = cfg.model_dump()
    data[section][key] = yaml.safe_load(value)  # "4" -> 4: the config takes no numbers as strings
    return RunConfig.model_validate(data)


def test_a_layout_that_does_not_fit_is_refused_with_fixes_that_fit() -> None:
    preset = load_preset("mm1-7b")
    cfg = preset.model_copy(
        update={
            "parallel": preset.parallel.model_copy(update={"tp": 2, "recompute": "selective"}),
            "train": preset.train.model_copy(update={"micro_batch_size": 2}),
        }
    )
    with pytest.raises(PlanError) as info:
        check(cfg, "h100-80gb")
    msg = str(info.value)
    assert re.match(r"mm1-7b needs \d+\.\d GB per GPU on h100-80gb \(80 GB\): ", msg), msg
    fixes = msg.split(": ", 1)[1].split(" or ")
    assert "set parallel.sequence_parallel=true" in fixes and any("parallel.tp to 4" in f for f in fixes)
    for fix in fixes:  # every fix named fits
        assert check(_apply_fix(cfg, fix), "h100-80gb").fits


def test_a_model_too_big_for_its_gpus_is_told_to_add_nodes() -> None:
    cfg = load_preset("mm1-30b")
    small = cfg.model_copy(update={"parallel": cfg.parallel.model_copy(update={"world_size": 8})})
    with pytest.raises(PlanError, match=r"no single change .* add nodes"):
        check(small, "h100-80gb")
    with pytest.raises(PlanError, match="no layout on 1 node"):
        choose(cfg, "h100-80gb", nodes=1)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"tp": 3}, "model.decoder.num_attention_heads=16"),
        ({"tp": 16}, "parallel.tp=16 must divide parallel.gpus_per_node=8"),
        ({"pp": 3}, "model.decoder.num_layers=20"),
        ({"world_size": 60}, "parallel.world_size=60 is not divisible by parallel.gpus_per_node=8"),
        ({"micro_batch_size": 3}, "train.global_batch_size=512 must be a multiple of train.micro_batch_size"),
        ({"ep": 2}, "parallel.ep=2 needs an MoE decoder"),
    ],
)
def test_indivisible_layouts_are_refused_naming_the_field(change: dict, named: str) -> None:
    cfg = load_preset("mm1-ablation")
    lay = replace(ClusterLayout.of(cfg), **change)
    assert any(named in p for p in problems(lay, cfg)), problems(lay, cfg)
    # check() refuses the same layout in a config that skipped validation
    par = {k: v for k, v in change.items() if k != "micro_batch_size"}
    bad = cfg.model_copy(
        update={
            "parallel": cfg.parallel.model_copy(update=par),
            "train": cfg.train.model_copy(update={k: v for k, v in change.items() if k == "micro_batch_size"}),
        }
    )
    with pytest.raises(PlanError, match=re.escape(named)):
        check(bad, "h100-80gb")


def test_moe_experts_must_divide_over_ep() -> None:
    cfg = load_preset("mm1-7b-moe")
    assert any("model.moe.num_experts=32" in p for p in problems(replace(ClusterLayout.of(cfg), ep=3), cfg))


def test_gpus_per_node_must_divide_world_size() -> None:
    with pytest.raises(ValueError, match="world_size=12 is not divisible by gpus_per_node=8"):
        ParallelConfig(world_size=12, gpus_per_node=8)
    assert ParallelConfig(world_size=16, gpus_per_node=8).nodes == 2
    assert ParallelConfig(world_size=4).nodes == 1  # gpus_per_node None: one node


def test_nodes_search_returns_the_fastest_fitting_layout() -> None:
    cfg = load_preset("mm1-7b")
    plan = choose(cfg, "h100-80gb", nodes=4)
    assert plan.fits and plan.layout.world_size == 32 and plan.layout.nodes == 4
    assert plan.cfg.parallel.world_size == 32 and plan.cfg.parallel.gpus_per_node == 8  # a validated config
    again = check(plan.cfg, "h100-80gb")
    assert again.memory == plan.memory and again.step_seconds == pytest.approx(plan.step_seconds)
    # the preset's own per-node layout on 4 nodes is no faster
    own = cfg.model_copy(update={"parallel": cfg.parallel.model_copy(update={"world_size": 32})})
    assert plan.step_seconds <= estimate(own, "h100-80gb").step_seconds
    assert choose(cfg, "h100-80gb").layout == ClusterLayout.of(cfg)  # no --nodes: the preset's own


def test_gpu_names_are_checked() -> None:
    with pytest.raises(PlanError, match="known GPUs: " + ", ".join(GPUS)):
        find_gpu("b200")


def test_cli_prints_the_table_of_the_paper_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--all", "--gpu", "h100-80gb"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| preset | params (active) | nodes x GPUs | TP | PP | EP |")
    assert [line.split(" | ")[0].lstrip("| ") for line in lines[2:]] == list(PAPER_PRESETS)
    assert "| mm1-30b | 30.43B | 64 x 8 | 8 | 1 | 1 | 64 | 1 x 8 | selective |" in "\n".join(lines)


def test_cli_refuses_what_does_not_fit_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--preset", "mm1-7b", "--set", "parallel.tp=1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mm1 plan: error: mm1-7b needs ")
    assert main(["plan", "--all", "--gpu", "a100-40gb"]) == 1  # the table, then one line per misfit
    captured = capsys.readouterr()
    misfits = [line for line in captured.out.splitlines() if " > 40 |" in line]
    assert misfits and len(captured.err.strip().splitlines()) == len(misfits)


def test_cli_describes_one_plan_and_searches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--preset", "mm1-ablation", "--gpu", "a100-80gb"]) == 0
    out = capsys.readouterr().out
    assert "mm1-ablation on a100-80gb: 8 node(s) x 8 GPUs = 64" in out and "total" in out and "(fits)" in out
    assert main(["plan", "--preset", "mm1-3b", "--nodes", "2"]) == 0
    assert "2 node(s) x 8 GPUs = 16" in capsys.readouterr().out


def test_job_resources_agree_with_the_plan() -> None:
    cfg = load_preset("mm1-7b")
    plan = check(cfg, "h100-80gb")
    res = job_resources(cfg, "h100-80gb", max_minutes=10**6)
    assert res == {
        "nodes": 32,
        "tasks": 256,
        "tasks_per_node": 8,
        "gpus_per_node": 8,
        "cpus_per_task": res["cpus_per_task"],
        "mem_mb": 8 * HOST_MB_PER_GPU,
        "runtime": math.ceil(plan.hours * 60 * SAFETY + STARTUP_MINUTES),
    }
    assert res["cpus_per_task"] >= 1
    assert job_resources(cfg, "h100-80gb")["runtime"] == min(res["runtime"], MAX_MINUTES)
    one = job_resources(_small(), "h100-80gb")  # gpus_per_node None: one node
    assert (one["nodes"], one["tasks"], one["tasks_per_node"]) == (1, 1, 1)
    too_big = cfg.model_copy(update={"parallel": cfg.parallel.model_copy(update={"tp": 1})})
    with pytest.raises(PlanError, match="needs"):
        job_resources(too_big, "h100-80gb")


def _measured(name: str) -> dict:
    """A GPU benchmark's measurement (bench/gpu_mfu.py on one H100 80GB, committed JSON)."""
    return json.loads((ROOT / "bench" / "results" / name).read_text())["results"]["run"]


def _one_gpu(recompute: str, micro_batch: int, sequences: int) -> RunConfig:
    """mm1-ablation as bench/gpu_mfu.py measured it: one GPU, bf16, no distributed optimizer."""
    layout = ClusterLayout(1, 1, 1, 1, 1, micro_batch, sequences, recompute, False)
    return apply(load_preset("mm1-ablation"), layout)


@pytest.mark.parametrize("result", ["gpu_mfu_recompute_none.json", "gpu_mfu.json"])
def test_memory_matches_the_h100_measurement(result: str) -> None:
    """The steady-state peak (PyTorch's max_memory_allocated over 7 steps of 16 sequences, Adam's m
    and v present) against the plan without its overhead (context, fragmentation), which the
    allocator does not count; the first step's 34.3 GB peak is the optimizer step's, before m and v
    existed: weights, main copy, grads, m, v and AdamW's fp32 temporaries."""
    run = _measured(result)
    chosen = run["chosen"]
    sequences = chosen["micro_batch"] * chosen["accumulation"]
    plan = estimate(_one_gpu(chosen["recompute"], chosen["micro_batch"], sequences), H100)
    mem = plan.memory
    assert mem.total - mem.overhead == pytest.approx(run["max_memory_gb"], rel=0.05)
    assert mem.total > run["max_memory_gb"]  # never optimistic
    first = run["search"][0]  # micro-batch 1, the first step of a fresh model
    assert mem.params + mem.grads + mem.optimizer + mem.step_temporaries == pytest.approx(first["peak_gb"], rel=0.02)
    for trial in run["search"]:  # what fitted on the 80 GB card fits in the plan, what ran out of memory does not
        plan = estimate(_one_gpu(chosen["recompute"], trial["micro_batch"], sequences), H100)
        assert plan.fits == trial["fits"], (trial, plan.memory.total)


def test_default_mfu_is_the_measured_one() -> None:
    none = _measured("gpu_mfu_recompute_none.json")  # recompute none, micro-batch 1: nothing but matmuls to plan
    assert ParallelConfig().plan_mfu == pytest.approx(none["mfu"], abs=0.005)
    plan = estimate(_one_gpu("none", 1, 16), H100)
    assert plan.step_seconds == pytest.approx(none["step_time_s"], rel=0.05)


def test_sequence_parallelism_splits_the_replicated_activations_over_tp() -> None:
    base = ["parallel.world_size=2", "parallel.tp=2", "parallel.recompute=selective"]
    plain, sp = estimate(_small(*base), H100), estimate(_small(*base, "parallel.sequence_parallel=true"), H100)
    # the decoder's 8 sbh of norm inputs and outputs per layer, replicated over TP 2, become 8 sbh / 2
    assert (plain.memory.activations - sp.memory.activations) * GB == pytest.approx(4 * 512 * 256 * 4)
    assert sp.step_seconds == pytest.approx(plain.step_seconds)  # the same bytes over TP
    with pytest.raises(ValueError, match="sequence_parallel=true needs tp > 1"):
        ParallelConfig(sequence_parallel=True)


def test_data_parallel_traffic_between_nodes_uses_every_nic_of_the_node() -> None:
    """A DP group with k ranks on each of m nodes: k NVLink ranks, then each its 1/k share over its own NIC."""
    n = ENCODER + CONNECTOR + EMBEDDING + HEAD + 4 * LAYER
    nodes = ["parallel.world_size=16", "parallel.gpus_per_node=8", "train.global_batch_size=16"]
    one = estimate(_small(*nodes[1:], "parallel.world_size=8"), H100)  # DP 8 inside one node: NVLink
    two = estimate(_small(*nodes), H100)  # DP 16: 8 ranks on each of 2 nodes
    compute = one.flops["total"] / (16 * H100.bf16_tflops * 1e12 * ParallelConfig().plan_mfu)
    nic = 2 * 4 * n * (7 / 8 / (H100.nvlink_gbps * GB) + 1 / 2 / (8 * H100.network_gbps * GB))
    assert two.step_seconds == pytest.approx(compute + nic)
    assert one.step_seconds == pytest.approx(2 * compute + 2 * 4 * n * 7 / 8 / (H100.nvlink_gbps * GB))
    # overlapped with the backward (a planner-only layout), the reduction costs what the last backward does not hide
    f, lay = facts(two.cfg), replace(two.layout, overlap_grad_reduce=True)
    assert plan_of(two.cfg, f, lay, H100, two.mfu).step_seconds == pytest.approx(
        compute + max(0.0, nic - 2 / 3 * compute)
    )


def test_the_search_turns_on_sequence_parallelism_where_it_applies() -> None:
    for name, nodes in (("mm1-7b", 4), ("mm1-30b", 64)):
        plan = choose(load_preset(name), "h100-80gb", nodes=nodes)
        lay = plan.layout
        assert lay.tp > 1 and lay.sequence_parallel and not lay.overlap_grad_reduce
        assert plan.cfg.parallel.sequence_parallel  # a validated config


def test_overlapped_gradient_reduction_is_refused_for_training() -> None:
    with pytest.raises(ValueError, match="overlap_grad_reduce=true is not supported: megatron 0.16"):
        ParallelConfig(world_size=2, overlap_grad_reduce=True)
